"""Compression: size, latency and accuracy of every variant as ratios to the fp32 export.

For each task, in one run: train the zoo's cloud and edge models, then run the
compression search twice. Compressing the cloud architecture (prune + distil +
quantize) is the pipeline's real job; its chosen variant carries the goals,
measured against the fp32 ONNX export of the same architecture. Compressing the
small edge architecture shows where int8 alone stops paying: on a model of a
few thousand weights the QDQ scales and graph overhead are a large part of
the file, so its size ratio stays far from the cloud model's.

The search chooses on held-out validation data (the end of the training set,
which no zoo model trains on); the test set only reports the chosen variant.
Goals (chosen variant of the cloud architecture, vs its fp32 export):
size <= 0.3x, latency at batch 32 <= 0.35x, accuracy drop <= 0.5 point;
the fp32 cloud model reaches the paper's CNN accuracy (94%) on MNIST-1D.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from agent.model_store import ModelStore
from bench.results_file import Goal, bench_arguments, print_goals, write_result
from bench.zoo_models import data_options, train_zoo
from cloud.compress.base_models import trained_model
from cloud.compress.distill import DistillSettings, distillation_gain
from cloud.compress.recipe import Pruning, Quantization, Recipe, Structured, Unstructured
from cloud.compress.report import plot, report_document
from cloud.compress.search import search
from cloud.zoo.tasks import DataOptions, get_task

TASKS = ("mnist1d", "digits")
BUDGET_POINTS = 0.5
Base = Literal["cloud", "edge"]  # Recipe.base: which zoo architecture is compressed
BASES: tuple[Base, ...] = ("cloud", "edge")


def _recipe(base: Base, quick: bool) -> Recipe:
    if quick:
        return Recipe(base=base, pruning=Pruning(structured=Structured(keep_ratios=[1.0, 0.5]),
                                                 unstructured=Unstructured(sparsities=[]), finetune_epochs=1),
                      quantization=Quantization(modes=["fp32", "static"], calibration=["minmax"], per_channel=[False],
                                                calibration_samples=32), latency_repeats=5)
    if base == "edge":  # the small model: quantization alone, to show what int8 does there
        return Recipe(base=base, distillation=None,
                      pruning=Pruning(structured=Structured(keep_ratios=[1.0]), unstructured=Unstructured(sparsities=[])))
    return Recipe(base=base)


def _distillation(task: str, store: ModelStore, data: DataOptions, quick: bool) -> dict[str, float]:
    """The edge architecture trained on the cloud model's soft labels vs on hard labels, same seed."""
    _, teacher, _ = trained_model(store, task, "cloud")
    settings = DistillSettings(epochs=2 if quick else get_task(task).epochs["edge"])
    _, gain = distillation_gain(get_task(task).models["edge"], teacher, get_task(task).load(data), settings, seed=0)
    print(f"compression: {task} edge distilled {gain.distilled_accuracy:.2%} vs hard labels {gain.hard_label_accuracy:.2%}")
    return {"distilled_accuracy": gain.distilled_accuracy, "hard_label_accuracy": gain.hard_label_accuracy,
            "gain_points": round(gain.gain * 100, 3)}


def run_task(task: str, store: ModelStore, workdir: Path, quick: bool) -> dict[str, Any]:
    data = data_options(quick)
    train_zoo(store, task, quick)
    out: dict[str, Any] = {"distillation": _distillation(task, store, data, quick)}
    for base in BASES:
        print(f"compression: {task}, compressing the {base} architecture")
        result = search(store, task, _recipe(base, quick), workdir / task / base, max_drop_points=BUDGET_POINTS, data=data)
        out[base] = report_document(result)
    return out


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("compression", __doc__, argv, "tiny data, 2 epochs, a 4-variant grid")
    metrics: dict[str, Any] = {}
    goals: dict[str, Goal] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "store")
        for task in TASKS:
            docs = run_task(task, store, Path(tmp) / "work", args.quick)
            metrics[task] = docs
            chosen = next((r for r in docs["cloud"]["variants"] if r["chosen"]), None)
            if chosen is None:  # nothing within budget: report the reference so the goals read as not met
                chosen = {"size_ratio": 1.0, "latency_b32_ratio": 1.0, "accuracy_drop_points": 100.0}
            goals[f"{task}_size_ratio"] = Goal(chosen["size_ratio"], "<=", 0.3)
            goals[f"{task}_latency_b32_ratio"] = Goal(chosen["latency_b32_ratio"], "<=", 0.35)
            goals[f"{task}_accuracy_drop_points"] = Goal(chosen["accuracy_drop_points"], "<=", BUDGET_POINTS)
        goals["mnist1d_cloud_accuracy"] = Goal(round(metrics["mnist1d"]["cloud"]["cloud"]["accuracy"], 4), ">=", 0.94)
    params = {"tasks": list(TASKS), "budget_points": BUDGET_POINTS, "quick": args.quick,
              "recipe_cloud": _recipe("cloud", args.quick).model_dump(), "recipe_edge": _recipe("edge", args.quick).model_dump()}
    path = write_result("compression", params, metrics, goals, results_dir=args.results_dir)
    for task in TASKS:
        plot(metrics[task]["cloud"], path.with_name(f"compression_{task}.png"))
    print_goals("compression", goals)
    print(f"compression: wrote {path}")
    return path


if __name__ == "__main__":
    main()
