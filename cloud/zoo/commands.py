"""`fedge-cloud train` and `fedge-cloud models list`: the model zoo's subcommands.

Other modules add `models` actions (promote, rollback, publish) through ``add_models``'s
``more_actions``, so each action lives with the code it drives.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TypedDict

from agent.command_line import os_error_reason, print_help_of
from agent.config.problems import ConfigError
from agent.exit_codes import ExitCode
from agent.manifest import ManifestError
from agent.model_store import StoredModel
from cloud.fleet.feedback import FEEDBACK_ACCURACY, FEEDBACK_N
from cloud.options import add_registry_option, add_store_option, store_of
from cloud.registry import ModelRecord, RegistryUnavailable, existing_registry
from cloud.zoo.tasks import TASKS, DataOptions, DataTooSmall, UnknownTask, get_task


def add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `train`."""
    parser = commands.add_parser(
        "train",
        help="train a task's model and add it to the model store",
        description="Train the cloud or edge model of a task (deterministic for a seed), export it to ONNX"
        " and write the ONNX file, the fp32 checkpoint and a manifest as the next version in the store."
        f" The zoo's tasks: {', '.join(f'{t.name} ({t.description})' for t in TASKS.values())}. A task of your"
        " own (tasks/<name>.yaml, docs/TASKS.md) trains its edge student, distilled from the cloud model you"
        " imported.",
    )
    parser.add_argument("--task", required=True, help=f"{', '.join(TASKS)} or a task of your own")
    parser.add_argument("--model", required=True, choices=("cloud", "edge"), help="which architecture")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the task's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and shuffling (default 0)")
    parser.add_argument("--train-size", type=int, default=4000, help="generated training samples (mnist1d)")
    parser.add_argument("--test-size", type=int, default=1000, help="generated test samples (mnist1d)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_store_option(parser)
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from cloud.compress.base_models import NoModelToCompress  # torch loads only for commands that train
    from cloud.zoo.pipeline import train_and_publish

    for flag, value in (("--epochs", args.epochs), ("--train-size", args.train_size), ("--test-size", args.test_size)):
        if value is not None and value < 1:
            print(f"fedge-cloud train: {flag} must be at least 1", file=sys.stderr)
            return ExitCode.INVALID_INPUT
    store = store_of(args)
    try:
        get_task(args.task)  # a typo leaves no empty store behind
    except (UnknownTask, ConfigError) as exc:
        print(f"fedge-cloud train: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    try:
        store.root.mkdir(parents=True, exist_ok=True)  # a store that cannot be written fails now, not after training
    except OSError as exc:
        print(f"fedge-cloud train: cannot write the store {store.root}: {os_error_reason(exc)}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    try:
        result = train_and_publish(
            store, args.task, args.model, epochs=args.epochs, seed=args.seed,
            data=DataOptions(train_size=args.train_size, test_size=args.test_size), progress=not args.no_progress,
        )
    except DataTooSmall as exc:
        print(f"fedge-cloud train: {exc} (--train-size, --test-size)", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except (NoModelToCompress, ConfigError, ValueError) as exc:  # no teacher, bad data or factory, no such model
        print(f"fedge-cloud train: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except OSError as exc:  # e.g. a full temporary directory while exporting: not necessarily the store
        print(f"fedge-cloud train: {args.task}/{args.model} not released: {os_error_reason(exc)}", file=sys.stderr)
        return ExitCode.FAILURE
    m = result.stored.manifest
    print(f"{m.task}/{m.name} v{m.version}: test accuracy {result.test_accuracy:.2%}, "
          f"{m.size_bytes / 1024:.1f} KiB -> {result.stored.directory}")
    return ExitCode.OK


ModelsAction = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def add_models(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               more_actions: Sequence[ModelsAction] = ()) -> None:
    """Register `models` with `list`, then each of ``more_actions`` (each adds its own action parsers)."""
    parser = commands.add_parser("models", help="the model store's versions and their rollout states",
                                 description="Inspect the model store and change model versions' states.")
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    listing = actions.add_parser("list", help="list every model version in the store",
                                 description="List task, name, version, path and key metrics of every model, and"
                                 " when a registry exists its state (staged, canary, active, retired) and the"
                                 " run time at batch 1 that serving measured (b1 ms; --json has every batch size)"
                                 " and the accuracy on the fleet's labelled feedback with the number of labels"
                                 " (feedback).")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    add_store_option(listing)
    add_registry_option(listing)
    listing.set_defaults(run=run_models_list)
    for add_action in more_actions:
        add_action(actions)
    parser.set_defaults(run=print_help_of(parser))


class _Row(TypedDict):
    """One model in ``models list`` (and its --json)."""

    task: str
    name: str
    version: int
    path: str
    size_bytes: int
    metrics: dict[str, float]
    parent: str | None
    created_at: str


class _ListedRow(_Row, total=False):
    """With a registry: the version's state and the metrics serving recorded."""

    state: str | None
    registry_metrics: dict[str, float]


def _row(stored: StoredModel) -> _ListedRow:
    m = stored.manifest
    return {"task": m.task, "name": m.name, "version": m.version, "path": str(stored.model_path),
            "size_bytes": m.size_bytes, "metrics": m.metrics, "parent": m.parent_name and f"{m.parent_name} v{m.parent_version}",
            "created_at": m.created_at.isoformat()}


def _registry_states(url: str | None) -> dict[tuple[str, str, int], ModelRecord] | None:
    """Each version's registry record, or None when there is no registry (a missing SQLite file)."""
    registry = existing_registry(url)
    if registry is None:
        return None
    with registry:
        return {(m.task, m.name, m.version): m for m in registry.models()}


def _feedback(metrics: dict[str, float]) -> str:
    """``93.10% n=1200`` from a version's registry metrics, or ``-`` when no answer was labelled yet."""
    accuracy, n = metrics.get(FEEDBACK_ACCURACY), metrics.get(FEEDBACK_N)
    return "-" if accuracy is None or n is None else f"{accuracy:.2%} n={int(n)}"


def run_models_list(args: argparse.Namespace) -> int:
    store = store_of(args)
    try:
        states = _registry_states(args.registry)
    except (ValueError, RegistryUnavailable) as exc:
        print(f"fedge-cloud models list: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT if isinstance(exc, ValueError) else ExitCode.UNAVAILABLE
    rows: list[_ListedRow] = []
    problems: list[str] = []
    for entry in store.all():
        if isinstance(entry, ManifestError):
            problems.append(str(entry))
        else:
            rows.append(_row(entry))
    if states is not None:
        for r in rows:
            record = states.get((r["task"], r["name"], r["version"]))
            r["state"] = record.state.value if record else None
            r["registry_metrics"] = record.metrics if record else {}  # incl. the cloud's live latency_ms_b<n>
    for problem in problems:
        print(f"fedge-cloud models list: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"the store {store.root} holds no models yet; try: fedge-cloud train --task mnist1d --model edge")
    else:
        state_head = "" if states is None else f"{'state':<8} {'b1 ms':>7} {'feedback':>14} "
        print(f"{'task':<9} {'name':<22} {'ver':>3} {state_head}{'accuracy':>8} {'KiB':>7}  path")
        for r in rows:
            accuracy = r["metrics"].get("test_accuracy")
            shown = f"{accuracy:.2%}" if isinstance(accuracy, float) else "-"
            registry_metrics = r.get("registry_metrics", {})
            live = registry_metrics.get("latency_ms_b1")
            live_ms = "-" if live is None else f"{live:.2f}"
            state = "" if states is None else f"{r['state'] or '-':<8} {live_ms:>7} {_feedback(registry_metrics):>14} "
            kib = r["size_bytes"] / 1024
            print(f"{r['task']:<9} {r['name']:<22} {r['version']:>3} {state}{shown:>8} {kib:>7.1f}  {r['path']}")
    return ExitCode.INVALID_INPUT if problems else ExitCode.OK
