"""The serving_peers picture: req/s and p50 against requests in flight, one panel per model and mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"fedge": "tab:blue", "kserve": "tab:orange", "triton": "tab:green"}


def plot(table: dict[str, Any], floor: dict[str, Any], models: list[str], modes: list[str], path: Path) -> Path:
    """``table[server][model][mode]["c<k>"]`` holds ``req_per_s`` and ``p50_ms``; the floor is dashed."""
    import matplotlib  # only where a picture is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, mode) for m in models for mode in modes]
    fig, axes = plt.subplots(2, len(panels), figsize=(4 * len(panels), 7), squeeze=False)
    for col, (model, mode) in enumerate(panels):
        top, bottom = axes[0][col], axes[1][col]
        cs: list[int] = []
        most = 0.0
        for server, by_model in table.items():
            points = by_model[model][mode]
            cs = sorted(int(k[1:]) for k in points)
            most = max(most, *(points[f"c{c}"]["req_per_s"] for c in cs))
            top.plot(cs, [points[f"c{c}"]["req_per_s"] for c in cs], "o-", color=COLOURS.get(server), label=server)
            bottom.plot(cs, [points[f"c{c}"]["p50_ms"] for c in cs], "o-", color=COLOURS.get(server), label=server)
        best = floor[model]["best_rows_per_s"]
        if best <= 3 * most:  # a floor 100x above every server (the tiny edge model) would flatten the curves
            top.axhline(best, ls="--", color="grey", label=f"bare session.run, best batch ({best:.0f} rows/s)")
        else:
            top.text(0.02, 0.02, f"bare session.run: {best:,.0f} rows/s (off the scale)", transform=top.transAxes,
                     fontsize=8, color="grey")
        bottom.axhline(floor[model]["p50_ms_batch1"], ls="--", color="grey", label="bare session.run, batch 1")
        top.set_title(f"{model}, {mode}")
        top.set_ylabel("requests / s")
        bottom.set_ylabel("p50 latency (ms)")
        bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(cs, [str(c) for c in cs])
            ax.set_xlabel("requests in flight")
            ax.grid(True, alpha=0.3)
        top.set_ylim(bottom=0)
    axes[0][-1].legend(fontsize=8)
    axes[1][0].legend(fontsize=8)
    fig.suptitle("OIP v2 over HTTP, same ONNX file and session options, same client (1 intra-op thread, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
