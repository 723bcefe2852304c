"""Cascade: accuracy against offload rate, per task, with the zoo's models.

For every threshold on the edge model's calibrated confidence (max_prob, the
agent's default metric), requests below it take the cloud model's answer (or
the fused edge+cloud answer); the curve is accuracy against the share offloaded.
Lines in the same run: edge-only and cloud-only accuracy. Two edge models are
compared: the small architecture trained from scratch, and the compression
pipeline's release (the cloud architecture pruned, distilled and int8-quantized),
which is what a device runs. Goal (edge-agent issue): at <= 10 % offload the
cascade reaches >= 0.99x the cloud-only accuracy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from agent.confidence import confidence, fuse, softmax
from agent.model_store import ModelStore, StoredModel
from agent.session import open_session
from bench.results_file import Goal, bench_arguments, write_result
from bench.zoo_models import data_options, train_zoo
from cloud.compress.recipe import Pruning, Quantization, Recipe, Structured, Unstructured
from cloud.compress.search import search
from cloud.store import publish
from cloud.zoo.tasks import get_task

TASKS = ("mnist1d", "digits")
BUDGET = 0.10
FUSION_WEIGHT = 0.7


def _probs(stored: StoredModel, x: np.ndarray) -> np.ndarray:
    session = open_session(stored.model_path)
    return softmax(session.run(None, {"input": x})[0], stored.manifest.temperature)


def curve(edge: np.ndarray, cloud: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Offload rate, cascade accuracy and fused accuracy for thresholds at every confidence quantile."""
    conf = confidence(edge, "max_prob")
    fused = fuse(edge, cloud, FUSION_WEIGHT)
    rates, cascade, fusion = [], [], []
    for rate in np.linspace(0, 1, 41):
        offloaded = conf < np.quantile(conf, rate) if rate > 0 else np.zeros(len(y), bool)
        rates.append(float(offloaded.mean()))
        cascade.append(float(np.where(offloaded, cloud.argmax(1), edge.argmax(1)).__eq__(y).mean()))
        fusion.append(float(np.where(offloaded, fused.argmax(1), edge.argmax(1)).__eq__(y).mean()))
    return {"offload_rate": rates, "accuracy": cascade, "fused_accuracy": fusion}


def best_within(points: dict[str, list[float]], key: str, budget: float) -> float:
    return max(a for r, a in zip(points["offload_rate"], points[key], strict=True) if r <= budget + 1e-9)


def _compressed_edge(store: ModelStore, task: str, workdir: Path, quick: bool) -> StoredModel:
    """Run the compression search (a short grid) and release its pick, as `fedge-cloud compress` does."""
    recipe = Recipe(pruning=Pruning(structured=Structured(keep_ratios=[1.0, 0.5]),
                                    unstructured=Unstructured(sparsities=[]), finetune_epochs=1 if quick else 15),
                    quantization=Quantization(modes=["static"], calibration=["minmax"], per_channel=[False]),
                    latency_repeats=5)
    result = search(store, task, recipe, workdir, max_drop_points=100.0 if quick else 0.5, data=data_options(quick),
                    log=lambda _line: None)
    chosen = result.chosen or result.best_effort()
    return publish(store, task, f"{task}-edge-compressed", chosen.path,
                   metrics={"test_accuracy": chosen.measurement.accuracy}, recipe={"variant": chosen.name},
                   temperature=result.calibration.temperature if result.calibration else 1.0,
                   parent=result.base.manifest)


def run_task(task: str, store: ModelStore, workdir: Path, quick: bool) -> dict[str, Any]:
    train_zoo(store, task, quick)
    data = get_task(task).load(data_options(quick))
    cloud = _probs(store.get(task, f"{task}-cloud"), data.x_test)
    out: dict[str, Any] = {"cloud_only_accuracy": float((cloud.argmax(1) == data.y_test).mean())}
    edges = {"scratch": store.get(task, f"{task}-edge"), "compressed": _compressed_edge(store, task, workdir, quick)}
    for label, stored in edges.items():
        edge = _probs(stored, data.x_test)
        points = curve(edge, cloud, data.y_test)
        out[label] = {"edge_only_accuracy": points["accuracy"][0], "curve": points,
                      "accuracy_at_budget": best_within(points, "accuracy", BUDGET),
                      "fused_accuracy_at_budget": best_within(points, "fused_accuracy", BUDGET),
                      "model": f"{stored.manifest.name} v{stored.manifest.version}"}
        print(f"cascade: {task} {label}: edge {points['accuracy'][0]:.2%}, at <=10% offload "
              f"{out[label]['accuracy_at_budget']:.2%} (cloud only {out['cloud_only_accuracy']:.2%})")
    return out


def plot(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(11, 4.5))
    for ax, task in zip(axes, TASKS, strict=True):
        doc = metrics[task]
        for label, style in (("compressed", "-"), ("scratch", "--")):
            c = doc[label]["curve"]
            ax.plot(np.array(c["offload_rate"]) * 100, np.array(c["accuracy"]) * 100, style, label=f"cascade, {label} edge")
        ax.axhline(doc["cloud_only_accuracy"] * 100, color="tab:green", linestyle=":", label="cloud only")
        ax.axvline(BUDGET * 100, color="gray", linewidth=0.8)
        ax.set_title(task)
        ax.set_xlabel("offloaded requests (%)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("cascade", __doc__, argv)
    metrics: dict[str, Any] = {}
    goals: dict[str, Goal] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "store")
        for task in TASKS:
            doc = metrics[task] = run_task(task, store, Path(tmp) / task, args.quick)
            ratio = doc["compressed"]["accuracy_at_budget"] / doc["cloud_only_accuracy"]
            goals[f"{task}_accuracy_at_10pct_offload_vs_cloud"] = Goal(round(ratio, 4), ">=", 0.99)
    path = write_result("cascade", {"tasks": list(TASKS), "budget": BUDGET, "metric": "max_prob",
                                    "fusion_weight": FUSION_WEIGHT, "quick": args.quick}, metrics, goals,
                        results_dir=args.results_dir)
    plot(metrics, path.with_suffix(".png"))
    print(f"cascade: wrote {path}")
    return path


if __name__ == "__main__":
    main()
