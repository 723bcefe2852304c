"""`fedge-cloud models import` and `models calibrate`: arguments in, cloud.imports.importing and .calibrating out."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent.exit_codes import ExitCode
from agent.manifest import TensorSpec
from cloud.imports.inspection import ImportRefused
from cloud.options import add_registry_option, add_store_option, refused, store_of
from cloud.registry import Registry, RegistryUnavailable, open_registry

_Done = TypeVar("_Done")


def add_import(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `models import`."""
    parser = actions.add_parser(
        "import", help="add your own ONNX model to the store",
        description="Check an ONNX file (the ONNX checker, ONNX Runtime loading it, one run on zeros of its"
        " declared shapes, element types fedge carries, a batch axis on every input), read every input's and"
        " output's name, type and shape from the graph, and add it as the next version of TASK/NAME in the"
        " store, staged in the registry. What the first output holds decides what offload can do: a final"
        " Softmax means probabilities (used as they are), a [batch, classes] float output logits (the agent"
        " applies softmax), anything else no class scores (served locally, no confidence policy); --outputs"
        " overrides what the graph suggests. A file fedge cannot serve writes nothing (exit 2). Sign the new"
        " version with `fedge-cloud models publish --version V` before agents install it.",
    )
    parser.add_argument("--task", required=True, help="task the model serves, e.g. keywords")
    parser.add_argument("--onnx", required=True, type=Path, metavar="FILE", help="the ONNX file")
    parser.add_argument("--role", choices=("cloud", "edge"), default="cloud",
                        help="where it runs, which names it TASK-cloud (served by fedge-cloud serve) or TASK-edge"
                        " (default cloud)")
    parser.add_argument("--name", default=None, help="model name instead of TASK-ROLE (workers serve TASK-cloud*)")
    parser.add_argument("--outputs", choices=("logits", "probabilities", "other"), default=None,
                        help="what the first output holds, where the graph says otherwise or cannot tell")
    parser.add_argument("--labels", type=Path, default=None, metavar="FILE",
                        help="the classes' names, one per line in the order of the model's scores (UTF-8): answers"
                        " then name their top class")
    add_store_option(parser)
    add_registry_option(parser)
    parser.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> int:
    from cloud.imports.importing import import_model  # onnx and torch load only when a file is imported

    name = args.name or f"{args.task}-{args.role}"
    outcome = _in_registry("import", args.registry, (ImportRefused, ValueError), lambda registry: import_model(
        store_of(args), registry, args.task, name, args.onnx, args.outputs, args.labels))
    if isinstance(outcome, ExitCode):
        return outcome
    stored, inspected = outcome
    m = stored.manifest
    print(f"imported {m.task}/{m.name} v{m.version} (sha256 {m.sha256[:12]}…), staged")
    for role, specs in (("input", m.inputs), ("output", m.outputs)):
        for spec in specs:
            print(f"  {role:6} {_shown(spec)}")
    print(f"  first output: {inspected.output_kind} ({inspected.why})")
    if m.labels:
        print(f"  labels: {', '.join(m.labels[:5])}{', …' if len(m.labels) > 5 else ''} ({len(m.labels)})")
    if inspected.output_kind != "other":
        print(f"  uncalibrated (temperature 1): fit one on your labelled data with fedge-cloud models calibrate"
              f" --task {m.task} --name {m.name} --data val.npz")
    print(f"sign it for agents: fedge-cloud models publish --task {m.task} --name {m.name} --version {m.version}")
    return ExitCode.OK


def _shown(spec: TensorSpec) -> str:
    dims = ", ".join("batch" if i == 0 and d is None else "any" if d is None else str(d)
                     for i, d in enumerate(spec.shape))
    return f"{spec.name}: {spec.dtype} [{dims}]"


def add_calibrate(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `models calibrate`."""
    parser = actions.add_parser(
        "calibrate", help="fit an imported classifier's confidence temperature on your labelled data",
        description="Run TASK/NAME (newest version unless --version) on labelled held-out rows, fit the temperature"
        " T that makes softmax(logits / T) honest (least negative log-likelihood), and store the same file as the"
        " next version with T in its manifest, staged; the expected calibration error (ECE) before and after is"
        " printed and kept in the manifest. DATA is an .npz: x_val and y_val (or x and y), or one array per input"
        " name and y_val; labels are class indices. Rows the model trained on make T too small: use held-out"
        " rows. Sign the new version with `fedge-cloud models publish` before agents install it.",
    )
    parser.add_argument("--task", required=True, help="the model's task")
    parser.add_argument("--name", default=None, help="model name (default TASK-cloud)")
    parser.add_argument("--version", type=int, default=None, help="version to calibrate (default: the newest)")
    parser.add_argument("--data", required=True, type=Path, metavar="NPZ", help="labelled validation rows (.npz)")
    add_store_option(parser)
    add_registry_option(parser)
    parser.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from cloud.imports.calibrating import CalibrationRefused, calibrate

    name = args.name or f"{args.task}-cloud"
    done = _in_registry("calibrate", args.registry, (CalibrationRefused,), lambda registry: calibrate(
        store_of(args), registry, args.task, name, args.data, args.version))
    if isinstance(done, ExitCode):
        return done
    m = done.stored.manifest
    print(f"calibrated {m.task}/{m.name} on {done.rows} rows (accuracy {done.accuracy:.2%}): temperature"
          f" {done.temperature:.3f}")
    print(f"  ECE {done.ece_before:.4f} -> {done.ece_after:.4f}, NLL {done.nll_before:.4f} -> {done.nll_after:.4f}")
    print(f"stored as v{m.version} (parent v{m.parent_version}), staged; sign it for agents: fedge-cloud models"
          f" publish --task {m.task} --name {m.name} --version {m.version}")
    return ExitCode.OK


def _in_registry(action: str, url: str | None, refusals: tuple[type[Exception], ...],
                 act: Callable[[Registry], _Done]) -> _Done | ExitCode:
    """``act`` on the registry; a refusal (exit 2) or a registry out of reach (exit 3) said on stderr instead."""
    caught: tuple[type[Exception], ...] = (*refusals, RegistryUnavailable)
    try:
        with open_registry(url) as registry:
            return act(registry)
    except caught as exc:
        return refused(f"fedge-cloud models {action}", exc)
