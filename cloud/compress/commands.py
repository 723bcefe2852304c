"""`fedge-cloud compress`: run a recipe's grid, report it, and release the chosen variant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config.problems import ConfigError
from agent.exit_codes import ExitCode
from agent.federated.architectures import FactoryError
from agent.manifest import ManifestError
from cloud.compress.recipe import load_recipe
from cloud.options import add_store_option, store_of
from cloud.store import publish
from cloud.zoo.tasks import TASKS, UnknownTask, model_name

if TYPE_CHECKING:
    from cloud.compress.search import SearchResult


def add_compress(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `compress`."""
    parser = commands.add_parser(
        "compress",
        help="prune, distil and quantize a task's model; release the best variant within a budget",
        description="Try every variant of the recipe's grid (structured/unstructured pruning with fine-tuning,"
        " distillation from the cloud model, fp16/dynamic/static int8), measure accuracy, size and ONNX Runtime"
        " latency at batch 1 and 32 against the fp32 export of the same architecture, pick the Pareto-best"
        " variant whose validation-accuracy drop is within the budget, calibrate its temperature, and add it to the store as"
        " the next version of <task>-edge. Writes report.json, report.md and report.png. Exits 1 when no variant"
        " is within the budget.",
    )
    parser.add_argument("--task", required=True, help=f"{', '.join(TASKS)} or a task of your own (tasks/<name>.yaml)")
    parser.add_argument("--recipe", type=Path, default=None, help="recipe YAML (default: the built-in grid)")
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0,
                        help="largest accepted drop of validation accuracy (held-out training data; the test set"
                        " only reports) in percentage points (default 1.0)")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default: reports/<task>)")
    parser.add_argument("--no-publish", action="store_true", help="report only; do not add the variant to the store")
    add_store_option(parser)
    parser.set_defaults(run=run_compress)


def _release(args: argparse.Namespace, result: SearchResult) -> str:
    chosen = result.chosen
    assert chosen is not None and result.calibration is not None
    m = chosen.measurement
    stored = publish(
        store_of(args), result.task, model_name(result.task, "edge"), chosen.path,
        metrics={"test_accuracy": m.accuracy, "latency_b1_ms": m.latency_b1_ms, "latency_b32_ms": m.latency_b32_ms,
                 "parameters": float(m.parameters), "flops": float(m.flops),
                 "accuracy_drop_points": result.drop_points(chosen),
                 "validation_drop_points": result.validation_drop_points(chosen)},
        recipe={"variant": chosen.name, "pruning": chosen.pruning, "quantization": chosen.quantization,
                "max_accuracy_drop_points": result.max_drop_points,
                "trained": result.data.split_record()},  # fine-tuned on the same rows: compressible again
        temperature=result.calibration.temperature,
        parent=result.base.manifest,
        checkpoint={"arch": chosen.arch.as_dict(), "state_dict": chosen.pruned_model.state_dict()},
    )
    return f"{stored.manifest.task}/{stored.manifest.name} v{stored.manifest.version}"


def run_compress(args: argparse.Namespace) -> int:
    from cloud.compress.base_models import NoModelToCompress
    from cloud.compress.report import write_report  # torch and matplotlib: only when a model is compressed
    from cloud.compress.search import search

    out = args.out or Path("reports") / args.task
    if not args.max_accuracy_drop >= 0:  # NaN too: no variant could ever be within it
        print(f"fedge-cloud compress: --max-accuracy-drop must be 0 or more points, got {args.max_accuracy_drop}",
              file=sys.stderr)
        return ExitCode.INVALID_INPUT
    try:
        recipe = load_recipe(args.recipe)
        print(f"compress {args.task}: budget {args.max_accuracy_drop} points")
        result = search(store_of(args), args.task, recipe, out / "variants", max_drop_points=args.max_accuracy_drop)
    except (ConfigError, UnknownTask, NoModelToCompress, ManifestError, FactoryError) as exc:
        print(f"fedge-cloud compress: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    write_report(result, out)
    print(f"report: {out / 'report.md'} (and report.json, report.png)")
    if result.chosen is None:
        best = result.best_effort()
        print(f"fedge-cloud compress: no variant within {args.max_accuracy_drop} points; the best was {best.name} "
              f"with a validation drop of {result.validation_drop_points(best):.2f} points", file=sys.stderr)
        return ExitCode.FAILURE
    c = result.chosen.measurement
    ref = result.reference.measurement
    print(f"chosen {result.chosen.name}: validation drop {result.validation_drop_points(result.chosen):.2f} pts, "
          f"test accuracy {c.accuracy:.2%} (drop {result.drop_points(result.chosen):.2f} pts), "
          f"size {c.size_bytes / ref.size_bytes:.2f}x, b32 latency {c.latency_b32_ms / ref.latency_b32_ms:.2f}x, "
          f"temperature {result.calibration.temperature:.3f}" if result.calibration else "")
    if not args.no_publish:
        print(f"released {_release(args, result)}")
    return ExitCode.OK
