"""`fedge-cloud models import`: arguments in, cloud.imports.importing out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.exit_codes import ExitCode
from agent.manifest import TensorSpec
from cloud.imports.inspection import ImportRefused
from cloud.options import add_registry_option, add_store_option, store_of
from cloud.registry import RegistryUnavailable, open_registry


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
    add_store_option(parser)
    add_registry_option(parser)
    parser.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> int:
    from cloud.imports.importing import import_model  # onnx and torch load only when a file is imported

    name = args.name or f"{args.task}-{args.role}"
    try:
        with open_registry(args.registry) as registry:
            stored, inspected = import_model(store_of(args), registry, args.task, name, args.onnx, args.outputs)
    except (ImportRefused, ValueError) as exc:
        print(f"fedge-cloud models import: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except RegistryUnavailable as exc:
        print(f"fedge-cloud models import: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    m = stored.manifest
    print(f"imported {m.task}/{m.name} v{m.version} (sha256 {m.sha256[:12]}…), staged")
    for role, specs in (("input", m.inputs), ("output", m.outputs)):
        for spec in specs:
            print(f"  {role:6} {_shown(spec)}")
    print(f"  first output: {inspected.output_kind} ({inspected.why})")
    print(f"sign it for agents: fedge-cloud models publish --task {m.task} --name {m.name} --version {m.version}")
    return ExitCode.OK


def _shown(spec: TensorSpec) -> str:
    dims = ", ".join("batch" if i == 0 and d is None else "any" if d is None else str(d)
                     for i, d in enumerate(spec.shape))
    return f"{spec.name}: {spec.dtype} [{dims}]"
