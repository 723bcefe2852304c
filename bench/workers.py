"""Workers: cloud throughput with 1, 2 and 4 worker processes, as ratios to 1 worker.

Three ``fedge-cloud serve`` (1, 2 and 4 workers, each with its own private
broker, since their MQTT client ids are the same) run side by side serving
the zoo's MNIST-1D cloud model;
measurement windows rotate among them, round after round, so the machine's
background load (other jobs share it) falls on all three alike, and each
count's throughput is the median of its rounds. The load is simulated agents
(``bench.fleet_client``: the agent's own MQTT client, in a few processes)
keeping a fixed number of requests in flight, enough to fill every worker's
batches.

What this machine can show: with 2 cores, the broker, the load generator and
the workers share them, and the generator costs about as much CPU per request
as a worker. The result records CPU milliseconds per request for each part and
how much of a core one worker used, which says why more workers do (or do not)
add throughput here. No speed goal: the honest one would need more cores than
the rig's other parts take. The goal is correctness under full load: every
request answered.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from agent.metrics import nearest_rank
from agent.model_store import ModelStore
from bench.cloud_rig import ServedCloud, cpu_seconds, served_cloud
from bench.fleet_client import Load, Tally, run_fleet
from bench.results_file import Goal, bench_arguments, write_result
from bench.zoo_models import train_zoo
from cloud.local.mosquitto import Mosquitto

COUNTS, QUICK_COUNTS = (1, 2, 4), (1, 2)
AGENTS, PROCESSES, INFLIGHT = 16, 2, 6  # 96 requests in flight: full batches of 32 for up to 3 workers


def _round(cloud: ServedCloud, broker: Mosquitto, load: Load) -> dict[str, Any]:
    """One measurement window against one coordinator: the tally and the CPU each part used."""
    before, broker_before = cloud.usage(), cpu_seconds(broker.pid or 0)
    tally = run_fleet(load, AGENTS, PROCESSES, id_prefix=f"w{cloud.workers}")
    after, broker_after = cloud.usage(), cpu_seconds(broker.pid or 0)
    return {"tally": tally, "workers_cpu_s": after["workers_cpu_s"] - before["workers_cpu_s"],
            "coordinator_cpu_s": after["coordinator_cpu_s"] - before["coordinator_cpu_s"],
            "broker_cpu_s": broker_after - broker_before, "workers_rss_mb": after["workers_rss_mb"]}


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median throughput over rounds; latency and CPU per request pooled over them."""
    tally = Tally()
    for r in rounds:
        tally = tally.merge(r["tally"])
    answered = max(1, tally.answered_all)
    per_request = {part: round(sum(r[f"{part}_cpu_s"] for r in rounds) * 1000 / answered, 4)
                   for part in ("workers", "coordinator", "broker")}
    per_request["load_generator"] = round(tally.cpu_s * 1000 / answered, 4)
    throughput = statistics.median(r["tally"].answered_per_s for r in rounds)
    return {
        "throughput_per_s": round(throughput, 1),
        "rounds_per_s": [round(r["tally"].answered_per_s, 1) for r in rounds],
        "p50_ms": round(nearest_rank(tally.latencies_ms, 50), 2) if tally.latencies_ms else None,
        "p99_ms": round(nearest_rank(tally.latencies_ms, 99), 2) if tally.latencies_ms else None,
        "cpu_ms_per_request": per_request,
        "workers_cores_used": round(per_request["workers"] * throughput / 1000, 3),
        "workers_rss_mb": round(rounds[-1]["workers_rss_mb"], 1),
        "sent": tally.sent, "ok": tally.ok, "errors": dict(tally.errors), "lost": tally.lost,
        "mismatched": tally.mismatched, "duplicates": tally.duplicates,
    }


def _why(by_count: dict[int, dict[str, Any]], cores: int) -> str:
    """The scaling seen, explained from this run's own CPU accounting."""
    one = by_count[1]
    cpu = one["cpu_ms_per_request"]
    total_ms = sum(cpu.values())
    rig_cores = total_ms * one["throughput_per_s"] / 1000
    cap = cores * 1000 / total_ms
    most = max(by_count)
    return (f"With 1 worker, that worker was busy {one['workers_cores_used']:.2f} of a core at"
            f" {one['throughput_per_s']:.0f} requests/s, so a second worker had little to take over. Per request the"
            f" workers spent {cpu['workers']:.3f} ms CPU (one worker alone could do ~{1000 / cpu['workers']:.0f}/s"
            f" on a free core) and the rest of the rig {total_ms - cpu['workers']:.3f} ms (load generator"
            f" {cpu['load_generator']:.3f}, broker {cpu['broker']:.3f}, coordinator {cpu['coordinator']:.3f}): the"
            f" whole rig needs {total_ms:.3f} ms of CPU per request, so {cores} cores cap it near"
            f" {cap:.0f}/s however many workers serve; at that rate the load generator and broker take"
            f" {(total_ms - cpu['workers']) * cap / 1000:.2f} cores, leaving the workers"
            f" {cpu['workers'] * cap / 1000:.2f}. The rig got {rig_cores:.2f} of the {cores} cores; other jobs on the"
            f" machine took the rest (params.loadavg). With {most} workers on {cores} cores they take turns: they"
            f" spent {by_count[most]['cpu_ms_per_request']['workers']:.3f} ms CPU per request. Scaling with workers"
            " needs cores (or machines) that the broker and the agents do not use.")


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("workers", __doc__, argv, "one short round with 1 and 2 workers, for the smoke test")
    rounds, seconds = (1, 1.0) if args.quick else (5, 4.0)
    counts = QUICK_COUNTS if args.quick else COUNTS
    cores = os.cpu_count() or 1
    loadavg_before = os.getloadavg()
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        store = ModelStore(Path(tmp) / "store")
        train_zoo(store, "mnist1d", quick=True, roles=("cloud",))  # the weights do not change the speed
        brokers = {n: stack.enter_context(Mosquitto(Path(tmp) / f"broker-{n}")) for n in counts}
        clouds = {n: stack.enter_context(served_cloud(store.root, brokers[n], n, Path(tmp) / f"serve-{n}.log"))
                  for n in counts}
        for r in range(rounds):
            for n in counts if r % 2 == 0 else reversed(counts):
                load = Load(brokers[n].host, brokers[n].port, seconds=seconds, warmup_s=0.5, inflight=INFLIGHT)
                results[n].append(_round(clouds[n], brokers[n], load))
                print(f"workers: round {r + 1}/{rounds}, {n} worker(s): {results[n][-1]['tally'].answered_per_s:.0f}/s")
    by_count = {n: _summary(results[n]) for n in counts}
    base = by_count[1]["throughput_per_s"]
    metrics: dict[str, Any] = {f"throughput_ratio_{n}_vs_1": round(by_count[n]["throughput_per_s"] / base, 3)
                               for n in counts[1:]}
    metrics["unanswered"] = sum(s["lost"] + s["mismatched"] + sum(s["errors"].values()) for s in by_count.values())
    metrics["duplicates"] = sum(s["duplicates"] for s in by_count.values())
    metrics["by_workers"] = {str(n): s for n, s in by_count.items()}
    metrics["why"] = _why(by_count, cores)
    params = {"worker_counts": list(counts), "rounds": rounds, "seconds_per_round": seconds,
              "agents": AGENTS, "agent_processes": PROCESSES, "inflight_per_agent": INFLIGHT,
              "inflight_total": AGENTS * INFLIGHT, "model": "mnist1d-cloud (zoo architecture, quick-trained)",
              "max_batch": 32, "cores": cores, "quick": args.quick,
              "loadavg": {"before": [round(v, 2) for v in loadavg_before],
                          "after": [round(v, 2) for v in os.getloadavg()]}}
    goals = {"unanswered": Goal(metrics["unanswered"], "<=", 0), "duplicates": Goal(metrics["duplicates"], "<=", 0)}
    path = write_result("workers", params, metrics, goals, results_dir=args.results_dir)
    for n in counts:
        print(f"  {n} worker(s): {by_count[n]['throughput_per_s']} /s, p99 {by_count[n]['p99_ms']} ms")
    print(f"workers: {metrics['why']}\nworkers: wrote {path}")
    return path


if __name__ == "__main__":
    main()
