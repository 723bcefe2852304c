"""The closed loop's report: ``report.md`` with its plots, and ``loop.json`` for scripts.

What a new user reads after ``make demo``: whether the edge offloads less after the
federated rounds (and if not, why), the fleet's streams phase by phase, each round,
each device, the latency of local and offloaded answers, and the rollout history.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from cloud.federated.loop import LoopReport
from cloud.federated.table import pct
from cloud.local.agents import Tally
from cloud.registry import ModelState


def write_report(report: LoopReport, out: Path) -> Path:
    """``out/report.md``, ``out/rounds.png``, ``out/latency.png`` and ``out/loop.json``; returns report.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "loop.json").write_text(json.dumps(report.as_dict(), indent=2))
    _plot_rounds(report, out / "rounds.png")
    _plot_latency(report, out / "latency.png")
    (out / "report.md").write_text(markdown(report))
    return out / "report.md"


def outcome(report: LoopReport) -> str:
    """One sentence: did a federated release make the edge offload less at the same accuracy, and if not, why not."""
    if len(report.phases) < 2:
        return ("The loop stopped before a training phase finished, so there is nothing to compare."
                if report.interrupted else "There was no training phase to compare.")
    first, last = report.phases[0].total, report.phases[-1].total
    change = (f"offload {first.offload_rate:.1%} -> {last.offload_rate:.1%}, accuracy {first.accuracy:.1%} ->"
              f" {last.accuracy:.1%}")
    started_on = {t.version for t in report.phases[0].devices.values()}
    promoted = [e for e in report.rollouts if e.state is ModelState.ACTIVE and str(e.version) not in started_on]
    if not promoted:
        reasons = [r.release for r in report.rounds if r.release]
        return (f"No federated release was promoted, so the edge model did not change and the offload rate did not"
                f" fall ({change}: the streams' variation){f'; the last release: {reasons[-1]}' if reasons else ''}."
                " The first rounds from a weak start often lose accuracy; more rounds, each phase adding kept"
                " samples, get past that (make demo without --quick).")
    if last.offload_rate < first.offload_rate and last.accuracy >= first.accuracy - 0.01:
        return f"The edge offloads less at the same accuracy after v{promoted[-1].version} was promoted: {change}."
    return (f"The offload rate did not fall ({change}) although v{promoted[-1].version} was promoted: the streams"
            " differ from phase to phase (each device's own non-IID inputs), and a short phase measures few rows.")


def markdown(report: LoopReport) -> str:
    """The report as Markdown (tables and the two plots)."""
    p = report.plan
    lines = [
        "# fedge closed loop", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}. Task `{p.task}`; {len(report.devices)} agents from the"
        f" shipped profiles; {p.phases} training phase(s) of {p.rounds_per_phase} federated round(s), each ending"
        f" in a release offered through the canary and shadow gate; {p.inputs_per_phase} inputs per device and phase"
        f" (non-IID, Dirichlet {p.dirichlet:g})."
        + (f" The fleet starts from a first edge release trained on {p.first_edge_rows} labelled rows."
           if p.first_edge_rows else " The fleet starts from the store's edge model."),
        "", "**" + outcome(report) + "**", "",
    ]
    if report.interrupted:
        lines += ["*Interrupted: this report covers what ran before the stop.*", ""]
    lines += ["## The fleet's streams, phase by phase", "",
              "| phase | answers | offload | accuracy | degraded | errors | edge versions |", "|---|---|---|---|---|---|---|"]
    for phase in report.phases:
        t = phase.total
        versions = ", ".join(sorted({d.version for d in phase.devices.values()}))
        lines.append(f"| {phase.phase} | {t.requests} | {t.offload_rate:.1%} | {t.accuracy:.1%} | {t.degraded} |"
                     f" {t.errors} | {versions} |")
    lines += ["", "![offload rate and accuracy per phase and per round](rounds.png)", "",
              "## Federated rounds", "",
              ("Accuracy and the offload needed are the aggregate's, judged on the cloud's held-out rows (round 0 is"
               " the model the round started from)."), "",
              "| round | devices | declined | dropped | accuracy | offload needed | seconds | release |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report.rounds:
        lines.append(f"| {r.round} | {r.participants} | {r.declined} | {r.dropped} | {pct(r.accuracy)} |"
                     f" {pct(r.offload_rate)} | {r.seconds:.1f} | {r.release or ''} |")
    lines += ["", "## Devices", "",
              ("| device | profile | policy | trains | answers | offload first -> last | accuracy first -> last |"
               " edge p50 / p99 ms | cloud p50 / p99 ms | degraded | errors | edge version |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for device in report.devices:
        own = [ph.devices[device.device_id] for ph in report.phases if device.device_id in ph.devices]
        whole = Tally.summed(own)
        if not own:
            continue
        lines.append(
            f"| {device.device_id} | {device.profile} | {device.policy} | {'yes' if device.trains else 'no'} |"
            f" {whole.requests} | {own[0].offload_rate:.1%} -> {own[-1].offload_rate:.1%} |"
            f" {own[0].accuracy:.1%} -> {own[-1].accuracy:.1%} | {_ms(whole.local_ms)} | {_ms(whole.cloud_ms)} |"
            f" {whole.degraded} | {whole.errors} | {own[-1].version} |")
    lines += ["", "Latency is end to end through the agent (`Agent.infer`), local answers apart from offloaded ones.",
              "", "![latency of local and offloaded answers](latency.png)", "", "## Rollout history", ""]
    if report.rollouts:
        start = report.rollouts[0].at
        lines += ["| at (s) | version | state | reason |", "|---|---|---|---|"]
        lines += [f"| {e.at - start:.1f} | {e.version} | {e.state.value} | {e.reason} |" for e in report.rollouts]
    else:
        lines.append("No release was staged.")
    return "\n".join(lines) + "\n"


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.percentile(values, 50):.2f} / {np.percentile(values, 99):.2f}"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (imported only when a report is written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_rounds(report: LoopReport, path: Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    phases = [p.phase for p in report.phases]
    left.plot(phases, [p.total.offload_rate for p in report.phases], marker="o", label="offload rate")
    left.plot(phases, [p.total.accuracy for p in report.phases], marker="s", label="accuracy")
    left.set(xlabel="phase (a release offered before each after 0)", title="The fleet's streams", ylim=(0, 1))
    left.legend()
    right.plot([r.round for r in report.rounds], [r.accuracy or 0 for r in report.rounds], marker="o",
               label="aggregate accuracy")
    right.plot([r.round for r in report.rounds], [r.offload_rate or 0 for r in report.rounds], marker="s",
               label="offload needed (held-out)")
    right.set(xlabel="round", title="Federated rounds", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(report: LoopReport, path: Path) -> None:
    plt = _pyplot()
    whole = Tally.summed([t for p in report.phases for t in p.devices.values()])
    fig, ax = plt.subplots(figsize=(7, 4))
    every = whole.local_ms + whole.cloud_ms
    if every:
        bins = [float(b) for b in np.geomspace(max(min(every), 1e-3), max(every) * 1.01, 40)]
        for values, label in ((whole.local_ms, "answered on the edge"), (whole.cloud_ms, "offloaded to the cloud")):
            if values:
                ax.hist(values, bins=bins, alpha=0.6, label=f"{label} ({len(values)})")
        ax.set_xscale("log")
        ax.legend()
    ax.set(xlabel="latency (ms, log scale)", ylabel="answers", title="Local and offloaded answers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
