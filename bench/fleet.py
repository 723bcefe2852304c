"""Fleet: up to 200 simulated agents against one coordinator, against one agent alone in the same run.

One ``fedge-cloud serve --workers 2`` on a private broker serves the zoo's
MNIST-1D cloud model. Simulated agents (``bench.fleet_client``: the agent's own
MQTT client, each with its client id, reply topic, Last Will and retained
``online`` status; 50 to a process) each send a request every half second
with a 2 s deadline, for 1, 25, 50, 100 and 200 agents in turn.

Baseline: one agent alone, at 20 requests/s so its p99 rests on a few hundred
samples (one request out at a time, as at the fleet's rate). Goals:
* ``lost_requests`` = 0: every request sent gets exactly one answer, its own,
  an output or an explicit error reply (counted apart, by code);
* ``duplicate_replies`` = 0;
* ``p99_ratio_vs_1`` <= 3 at the largest fleet.
Also recorded per fleet size: the coordinator's and its workers' CPU seconds
and RSS (from /proc), the broker's CPU, and the load generator's own CPU. The
cloud's CPU per request counts its idle cost over the step (status reports
while agents start and drain), so it falls as the load rises.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.metrics import nearest_rank
from agent.model_store import ModelStore
from bench.cloud_rig import cpu_seconds, served_cloud
from bench.fleet_client import Load, Tally, run_fleet
from bench.results_file import Goal, bench_arguments, write_result
from bench.zoo_models import train_zoo
from cloud.local.mosquitto import Mosquitto

SIZES, QUICK_SIZES = (1, 25, 50, 100, 200), (1, 20)
RATE, BASELINE_RATE = 2.0, 20.0  # requests per second per agent
DEADLINE_MS = 2000
AGENTS_PER_PROCESS = 50
WORKERS = 2


def _step(agents: int, load: Load, cloud: Any, broker: Mosquitto) -> dict[str, Any]:
    """One fleet size: its tally, latency percentiles, and what the cloud and broker spent."""
    before, broker_before, started = cloud.usage(), cpu_seconds(broker.pid or 0), time.monotonic()
    tally: Tally = run_fleet(load, agents, math.ceil(agents / AGENTS_PER_PROCESS), id_prefix=f"n{agents}")
    after, broker_after, wall_s = cloud.usage(), cpu_seconds(broker.pid or 0), time.monotonic() - started
    answered = max(1, tally.answered_all)
    cloud_cpu = (after["coordinator_cpu_s"] - before["coordinator_cpu_s"]) + (after["workers_cpu_s"]
                                                                               - before["workers_cpu_s"])
    return {
        "agents": agents, "rate_per_agent": load.rate, "sent": tally.sent, "ok": tally.ok,
        "errors": dict(tally.errors), "lost": tally.lost, "mismatched": tally.mismatched,
        "duplicates": tally.duplicates, "answered_per_s": round(tally.answered_per_s, 1),
        "p50_ms": round(nearest_rank(tally.latencies_ms, 50), 3) if tally.latencies_ms else None,
        "p99_ms": round(nearest_rank(tally.latencies_ms, 99), 3) if tally.latencies_ms else None,
        "coordinator_cpu_s": round(after["coordinator_cpu_s"] - before["coordinator_cpu_s"], 3),
        "workers_cpu_s": round(after["workers_cpu_s"] - before["workers_cpu_s"], 3),
        "cloud_cpu_ms_per_request": round(cloud_cpu * 1000 / answered, 4),  # idle cost included: falls with load
        "cloud_cores_used": round(cloud_cpu / wall_s, 3),
        "broker_cpu_s": round(broker_after - broker_before, 3),
        "load_generator_cpu_s": round(tally.cpu_s, 3),
        "coordinator_rss_mb": round(after["coordinator_rss_mb"], 1), "workers_rss_mb": round(after["workers_rss_mb"], 1),
    }


def plot(steps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = [s["agents"] for s in steps]
    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(11, 4.5))
    lat.plot(agents, [s["p50_ms"] for s in steps], "o-", label="p50")
    lat.plot(agents, [s["p99_ms"] for s in steps], "s-", label="p99")
    lat.axhline(3 * steps[0]["p99_ms"], color="gray", linestyle=":", label="goal: 3x the lone agent's p99")
    lat.set_xscale("log")
    lat.set_xlabel(f"simulated agents ({RATE:g} requests/s each; the lone agent {BASELINE_RATE:g}/s)")
    lat.set_ylabel("round trip (ms)")
    lat.set_title(f"latency, one coordinator with {WORKERS} workers")
    lat.legend(fontsize=8)
    cpu.plot(agents, [s["cloud_cpu_ms_per_request"] for s in steps], "o-", label="coordinator + workers")
    cpu.set_xscale("log")
    cpu.set_xlabel("simulated agents")
    cpu.set_ylabel("CPU ms per request")
    cpu.set_title("cloud CPU per request")
    cpu.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("fleet", __doc__, argv, "1 and 20 agents for 2 s each, for the smoke test")
    sizes, seconds = (QUICK_SIZES, 2.0) if args.quick else (SIZES, 10.0)
    loadavg_before = os.getloadavg()
    steps = []
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        store = ModelStore(Path(tmp) / "store")
        train_zoo(store, "mnist1d", quick=True, roles=("cloud",))  # the weights do not change the cost
        with served_cloud(store.root, broker, WORKERS, Path(tmp) / "serve.log") as cloud:
            for agents in sizes:
                load = Load(broker.host, broker.port, seconds=seconds, warmup_s=1.0, deadline_ms=DEADLINE_MS,
                            rate=BASELINE_RATE if agents == 1 else RATE)
                steps.append(_step(agents, load, cloud, broker))
                print(f"fleet: {agents} agents: {steps[-1]['answered_per_s']}/s, p50 {steps[-1]['p50_ms']} ms,"
                      f" p99 {steps[-1]['p99_ms']} ms, lost {steps[-1]['lost']}")
    base, largest = steps[0], steps[-1]
    metrics: dict[str, Any] = {
        "lost_requests": sum(s["lost"] + s["mismatched"] for s in steps),
        "errors": sum(sum(s["errors"].values()) for s in steps),  # error replies by code, and client-side
        "duplicate_replies": sum(s["duplicates"] for s in steps),
        "largest_fleet": largest["agents"],
        "p50_ms_1": base["p50_ms"], "p99_ms_1": base["p99_ms"],
        "p50_ms_largest": largest["p50_ms"], "p99_ms_largest": largest["p99_ms"],
        "p50_ratio_vs_1": round(largest["p50_ms"] / base["p50_ms"], 3),
        "p99_ratio_vs_1": round(largest["p99_ms"] / base["p99_ms"], 3),
        "cloud_cpu_s_largest": round(largest["coordinator_cpu_s"] + largest["workers_cpu_s"], 3),
        "cloud_rss_mb_largest": round(largest["coordinator_rss_mb"] + largest["workers_rss_mb"], 1),
        "by_agents": {str(s["agents"]): s for s in steps},
    }
    params = {"agents": list(sizes), "rate_per_agent": RATE, "baseline_rate": BASELINE_RATE,
              "deadline_ms": DEADLINE_MS, "seconds_per_size": seconds, "agents_per_process": AGENTS_PER_PROCESS,
              "workers": WORKERS, "model": "mnist1d-cloud (zoo architecture, quick-trained)", "qos": 1,
              "cores": os.cpu_count(), "quick": args.quick,
              "loadavg": {"before": [round(v, 2) for v in loadavg_before],
                          "after": [round(v, 2) for v in os.getloadavg()]}}
    goals = {"lost_requests": Goal(metrics["lost_requests"], "<=", 0),
             "duplicate_replies": Goal(metrics["duplicate_replies"], "<=", 0),
             "p99_ratio_vs_1": Goal(metrics["p99_ratio_vs_1"], "<=", 3.0)}
    path = write_result("fleet", params, metrics, goals, results_dir=args.results_dir)
    plot(steps, path.with_suffix(".png"))
    print(f"fleet: lost {metrics['lost_requests']}, duplicates {metrics['duplicate_replies']}, p99 ratio"
          f" {metrics['p99_ratio_vs_1']}\nfleet: wrote {path}")
    return path


if __name__ == "__main__":
    main()
