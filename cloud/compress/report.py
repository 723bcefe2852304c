"""The compression report: JSON for scripts, a Markdown table for people, a PNG for the trade-off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloud.compress.search import SearchResult, Variant


def _row(result: SearchResult, v: Variant) -> dict[str, Any]:
    m, ref, cloud = v.measurement, result.reference.measurement, result.cloud
    return {
        "variant": v.name,
        "pruning": v.pruning,
        "quantization": v.quantization,
        **{k: round(val, 6) for k, val in m.as_dict().items()},
        "size_ratio": round(m.size_bytes / ref.size_bytes, 4),
        "latency_b1_ratio": round(m.latency_b1_ms / ref.latency_b1_ms, 4),
        "latency_b32_ratio": round(m.latency_b32_ms / ref.latency_b32_ms, 4),
        "accuracy_drop_points": round(result.drop_points(v), 3),
        "validation_drop_points": round(result.validation_drop_points(v), 3),
        "size_ratio_vs_cloud": round(m.size_bytes / cloud.size_bytes, 4),
        "latency_b32_ratio_vs_cloud": round(m.latency_b32_ms / cloud.latency_b32_ms, 4),
        "within_budget": v in result.within_budget,
        "pareto": v in result.pareto,
        "chosen": v is result.chosen,
    }


def report_document(result: SearchResult) -> dict[str, Any]:
    return {
        "task": result.task,
        "max_accuracy_drop_points": result.max_drop_points,
        "reference": result.reference.name,
        "cloud": result.cloud.as_dict(),
        "chosen": result.chosen.name if result.chosen else None,
        "calibration": None if result.calibration is None else {
            "temperature": result.calibration.temperature,
            "nll_before": result.calibration.nll_before,
            "nll_after": result.calibration.nll_after,
        },
        "variants": [_row(result, v) for v in result.variants],
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# Compression report: {doc['task']}",
        "",
        (
            f"Reference: fp32 export of the same architecture."
            f" Budget: validation-accuracy drop <= {doc['max_accuracy_drop_points']} points"
            f" (the choice is made on validation data; test columns only report)."
            f" Chosen: **{doc['chosen'] or 'none within budget'}**."
        ),
        "",
        ("| variant | val. acc. | val. drop (pts) | test acc. | test drop (pts) | KiB | size x | b1 ms | b32 ms | b32 x"
         " | params | FLOPs | |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["variants"]:
        mark = "chosen" if r["chosen"] else ("pareto" if r["pareto"] else ("" if r["within_budget"] else "over budget"))
        lines.append(
            f"| {r['variant']} | {r['validation_accuracy']:.2%} | {r['validation_drop_points']:.2f} "
            f"| {r['accuracy']:.2%} | {r['accuracy_drop_points']:.2f} | {r['size_bytes'] / 1024:.1f} "
            f"| {r['size_ratio']:.2f} | {r['latency_b1_ms']:.3f} | {r['latency_b32_ms']:.3f} | {r['latency_b32_ratio']:.2f} "
            f"| {int(r['parameters'])} | {int(r['flops'])} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Accuracy against latency at batch 32, marker area by file size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in doc["variants"]:
        color = "tab:red" if r["chosen"] else ("tab:blue" if r["within_budget"] else "tab:gray")
        ax.scatter(r["latency_b32_ms"], r["accuracy"] * 100, s=max(10.0, r["size_bytes"] / 400), color=color,
                   alpha=0.9 if r["chosen"] else 0.5, zorder=3 if r["chosen"] else 2)
        if r["pareto"] or r["chosen"]:  # label the front only: the grid's other points would overprint
            ax.annotate(r["variant"], (r["latency_b32_ms"], r["accuracy"] * 100), fontsize=7)
    ax.axhline(doc["cloud"]["accuracy"] * 100, color="tab:green", linestyle="--", label="cloud model (fp32)")
    ax.set_xlabel("latency at batch 32 (ms, ONNX Runtime CPU)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{doc['task']}: compressed variants (red: chosen, grey: over budget on validation;"
                 " area ~ size; labels: Pareto front)", fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: SearchResult, out_dir: Path) -> dict[str, Any]:
    """``report.json``, ``report.md`` and ``report.png`` in ``out_dir``; returns the document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = report_document(result)
    (out_dir / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(doc))
    plot(doc, out_dir / "report.png")
    return doc
