"""`fedge-cloud models promote` and `models rollback`: change a model version's rollout state by hand.

Registered into the `models` command through ``add_models(..., more_actions=...)``
in cloud/cli.py. A store version the registry has not seen yet is added (with
its manifest's metrics) when it is promoted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from agent.exit_codes import ExitCode
from agent.manifest import ManifestError
from cloud.options import add_registry_option, add_store_option, store_of
from cloud.registry import ModelState, Registry, RegistryUnavailable, open_registry


def add_state_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `promote` and `rollback` to the `models` command."""
    promote = actions.add_parser(
        "promote", help="make a model version the active one of its name",
        description="Set TASK/NAME vVERSION active; the version active before is retired. A version only in the"
        " model store is added to the registry first, with its manifest's metrics.")
    _model_options(promote)
    promote.add_argument("--version", type=int, required=True, help="the version to activate")
    promote.set_defaults(run=run_promote)
    rollback = actions.add_parser(
        "rollback", help="make an earlier version active again",
        description="Re-activate the latest version older than the active one that was active before (or --to V)"
        " and retire the current one; the history records the reason 'rollback'.")
    _model_options(rollback)
    rollback.add_argument("--to", type=int, default=None, metavar="V", help="the version to go back to")
    rollback.set_defaults(run=run_rollback)


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="the model's task, e.g. mnist1d")
    parser.add_argument("--name", required=True, help="the model's name, e.g. mnist1d-cloud")
    add_registry_option(parser)
    add_store_option(parser)


def run_promote(args: argparse.Namespace) -> int:
    def promote(registry: Registry) -> str:
        if registry.model(args.task, args.name, args.version) is None:
            stored = store_of(args).get(args.task, args.name, args.version)
            registry.add_model(args.task, args.name, args.version, metrics=dict(stored.manifest.metrics))
        registry.set_model_state(args.task, args.name, args.version, ModelState.ACTIVE, reason="promote")
        return f"{args.task}/{args.name} v{args.version} is active"

    return _change("promote", args, promote)


def run_rollback(args: argparse.Namespace) -> int:
    def rollback(registry: Registry) -> str:
        return f"{args.task}/{args.name} rolled back to v{registry.rollback(args.task, args.name, args.to)}"

    return _change("rollback", args, rollback)


def _change(action: str, args: argparse.Namespace, change: Callable[[Registry], str]) -> int:
    """Run ``change(registry)`` and turn what can go wrong into a message and an exit code."""
    try:
        with open_registry(args.registry) as registry:
            print(change(registry))
    except RegistryUnavailable as exc:
        print(f"fedge-cloud models {action}: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except (LookupError, ValueError, ManifestError) as exc:  # KeyError is a LookupError
        print(f"fedge-cloud models {action}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    return ExitCode.OK
