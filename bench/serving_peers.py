"""Serving peers: the agent's HTTP OIP v2 API against KServe and Triton on the same ONNX files.

Servers, each in its own process and all serving both models with the same
ONNX Runtime session options (1 intra-op thread, 1 inter-op, sequential, all
graph optimisations): ``fedge-agent run`` (local answers only, micro-batching);
a KServe 0.21 ModelServer with a custom ``kserve.Model`` that runs
onnxruntime; Triton through PyTriton 0.7, dynamic batching into an onnxruntime
callable. Both batchers run what is queued at once (no delay), up to the batch
size at which bare ``session.run`` peaks, measured first in the same run. The peers run in a virtual environment of their
own (bench/peers/venv.py: made once, cached). The floor is bare
``session.run`` in this process.

Models: the zoo's MNIST-1D edge model (40 floats in, trained here in seconds:
only its cost matters) and a MobileNetV2 at 3x96x96 with random weights
(bench/mobilenet.py). The agent answers softmax probabilities, the peers raw
logits; the shapes are the same.

One load client for all (bench/peers/load_client.py): a fresh process per
point, keep-alive connections, bodies as tritonclient encodes them, every
answer parsed by tritonclient. JSON and binary tensor modes, 1, 8 and 32
requests in flight, in interleaved rounds (every point of every server, then
the next round), so the machine's background load falls on all alike.

Goals, per model (edge, mobilenet) and mode (json, binary): fedge's p50 at 1
in flight <= 0.7x the best peer's; fedge's req/s at 32 in flight >= 1.5x the
best peer's. And fedge's MobileNetV2 binary req/s at 32 >= 0.8x bare
``session.run``'s best rows/s at any batch size 1..32.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from agent.metrics import nearest_rank
from agent.model_store import ModelStore
from bench import mobilenet
from bench.peers import venv as peers_venv
from bench.peers.bodies import MODES, Body, build, output_name
from bench.peers.floor import floor
from bench.peers.load_client import LoadClientError, Measured, Point, measure
from bench.peers.plot import plot
from bench.peers.servers import Served, Server, ServerFailed, start_fedge, start_kserve, start_triton, wait_ready
from bench.results_file import RESULTS_DIR, Goal, bench_arguments, print_goals, write_result
from bench.zoo_models import train_zoo
from cloud.store import publish

SERVERS, PEERS = ("fedge", "kserve", "triton"), ("kserve", "triton")
CONCURRENCY, QUICK_CONCURRENCY = (1, 8, 32), (1, 32)
ROUNDS, QUICK_ROUNDS = 3, 1
SECONDS, QUICK_SECONDS = 2.0, 0.4  # per point and round
FLOOR_SECONDS, QUICK_FLOOR_SECONDS = 6.0, 1.2
THREADS = 1  # intra-op threads, every server and the floor
QUEUE_DELAY_MS = 0.0  # fedge's micro-batcher and Triton's dynamic batcher alike: run what is queued, never wait
TARGETS = {"p50": 0.7, "throughput": 1.5, "floor": 0.8}


class BenchFailed(Exception):
    """A server answered nothing at some point; the message says where and why."""


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every server the bench started is stopped by PID."""
    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit("serving_peers: terminated")

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _models(work: Path, floor_s: float) -> tuple[ModelStore, dict[str, Served], dict[str, Any]]:
    """The store fedge serves from (the peers serve the very same files), and the floor of each model.

    The floor is measured first, on a quiet machine; the batch size at which bare ``session.run`` gives
    the most rows per second is each model's largest batch in fedge and Triton alike (MobileNetV2 runs
    fewer rows per second in batches of 32 than of 8 here, so 32 would cost both servers throughput).
    """
    store = ModelStore(work / "store")
    train_zoo(store, "mnist1d", quick=True, roles=("edge",))  # cost, not accuracy, is compared
    publish(store, "mobilenet", "mobilenetv2-96", mobilenet.exported(), metrics={})
    files = {"edge": ("mnist1d", store.get("mnist1d", "mnist1d-edge"), [-1, 40]),
             "mobilenet": ("mobilenet", store.get("mobilenet", "mobilenetv2-96"),
                           [-1, 3, mobilenet.RESOLUTION, mobilenet.RESOLUTION])}
    floors = {m: floor(stored.model_path, shape[1:], THREADS, floor_s * (1 if m == "mobilenet" else 0.3))
              for m, (_, stored, shape) in files.items()}
    served = {m: Served(name, stored.model_path, stored.manifest.name, shape, int(floors[m]["best_batch"]))
              for m, (name, stored, shape) in files.items()}
    return store, served, floors


def _start_servers(stack: ExitStack, work: Path, store: ModelStore, served: list[Served],
                   venv: peers_venv.PeersVenv) -> tuple[dict[str, Server], dict[str, float]]:
    """All three at once (start-up is mostly imports), then each waited for; seconds to ready per server."""
    started = time.perf_counter()
    servers = {
        "fedge": start_fedge(stack, work, store.root, served, THREADS, QUEUE_DELAY_MS),
        "kserve": start_kserve(stack, work, venv.python, served, THREADS),
        "triton": start_triton(stack, work, venv.python, peers_venv.libdir(venv.python), served, THREADS,
                               round(QUEUE_DELAY_MS * 1000)),
    }
    ready_s = {}
    for name, server in servers.items():
        wait_ready(server, served)
        ready_s[name] = round(time.perf_counter() - started, 2)
    print(f"serving_peers: servers ready after {ready_s} s", flush=True)
    return servers, ready_s


def _bodies(work: Path, servers: dict[str, Server], models: dict[str, Served]) -> dict[tuple[str, str, str], Body]:
    """Every server's request for every model and mode: one input row, the same bytes of data for all."""
    rng = np.random.default_rng(0)
    rows = {m: rng.standard_normal((1, *s.shape[1:])).astype(np.float32) for m, s in models.items()}
    bodies = {}
    for name, server in servers.items():
        for m, s in models.items():
            output = output_name(server.port, s.name)
            for mode in MODES:
                bodies[name, m, mode] = build(rows[m], "input", output, mode, work / f"body-{name}-{m}-{mode}.bin")
    return bodies


def _measure(server: Server, model: Served, body: Body, classes: int, concurrency: int,
             seconds: float) -> tuple[Measured, float]:
    """One point, and the server's CPU seconds over it."""
    point = Point(port=server.port, path=f"/v2/models/{model.name}/infer", headers=body.headers,
                  body_file=str(body.file), output=body.output, output_shape=[1, classes], concurrency=concurrency,
                  seconds=seconds)
    cpu = server.cpu_s()
    measured = measure(point)
    cpu = server.cpu_s() - cpu
    if not measured.latencies_ms:
        raise BenchFailed(f"{server.name} answered no request for {model.name} at {concurrency} in flight"
                          f" ({measured.errors} errors; the first: {measured.first_error});"
                          f" its log:\n    {server.log_tail()}")
    return measured, cpu


def _summary(runs: list[tuple[Measured, float]]) -> dict[str, Any]:
    """Latency pooled over rounds, req/s the median of the rounds'."""
    latencies = [v for m, _ in runs for v in m.latencies_ms]
    answered = len(latencies)
    window = sum(m.seconds for m, _ in runs)
    return {
        "p50_ms": round(nearest_rank(latencies, 50), 3),
        "p99_ms": round(nearest_rank(latencies, 99), 3),
        "req_per_s": round(statistics.median(m.per_s for m, _ in runs), 1),
        "rounds_req_per_s": [round(m.per_s, 1) for m, _ in runs],
        "requests": answered,
        "errors": sum(m.errors for m, _ in runs),
        "server_cpu_ms_per_request": round(sum(cpu for _, cpu in runs) * 1000 / answered, 3),
        "client_cores": round(sum(m.client_cpu_s for m, _ in runs) / window, 3),
    }


def _first_errors(runs: dict[tuple[str, str, str, int], list[tuple[Measured, float]]]) -> dict[str, str]:
    return {f"{s}/{m}/{mode}/c{c}": next(r.first_error for r, _ in rs if r.first_error)
            for (s, m, mode, c), rs in runs.items() if any(r.first_error for r, _ in rs)}


def _goals(table: dict[str, Any], floors: dict[str, Any], models: list[str]) -> tuple[dict[str, Goal], dict[str, Any]]:
    """The goals, and which peer was best at each compared point (with its number)."""
    goals: dict[str, Goal] = {}
    best: dict[str, Any] = {}
    for m in models:
        for mode in MODES:
            one = {s: table[s][m][mode]["c1"]["p50_ms"] for s in PEERS}
            peer = min(one, key=lambda s: one[s])
            best[f"p50_c1_{m}_{mode}"] = {"peer": peer, "p50_ms": one[peer]}
            goals[f"p50_vs_best_peer_{m}_{mode}"] = Goal(
                round(table["fedge"][m][mode]["c1"]["p50_ms"] / one[peer], 3), "<=", TARGETS["p50"])
            many = {s: table[s][m][mode]["c32"]["req_per_s"] for s in PEERS}
            peer = max(many, key=lambda s: many[s])
            best[f"req_per_s_c32_{m}_{mode}"] = {"peer": peer, "req_per_s": many[peer]}
            goals[f"throughput_c32_vs_best_peer_{m}_{mode}"] = Goal(
                round(table["fedge"][m][mode]["c32"]["req_per_s"] / many[peer], 3), ">=", TARGETS["throughput"])
    goals["binary_c32_vs_floor_mobilenet"] = Goal(
        round(table["fedge"]["mobilenet"]["binary"]["c32"]["req_per_s"] / floors["mobilenet"]["best_rows_per_s"], 3),
        ">=", TARGETS["floor"])
    return goals, best


def _best_by_point(table: dict[str, Any]) -> dict[str, Any]:
    """At every point, the peer with the lowest p50 and the one with the most req/s."""
    best: dict[str, Any] = {}
    for m, by_mode in table["fedge"].items():
        for mode, by_c in by_mode.items():
            for c in by_c:
                at = {s: table[s][m][mode][c] for s in PEERS}
                fast = min(at, key=lambda s: at[s]["p50_ms"])
                many = max(at, key=lambda s: at[s]["req_per_s"])
                best[f"{m}/{mode}/{c}"] = {"lowest_p50": fast, "p50_ms": at[fast]["p50_ms"],
                                           "most_req_per_s": many, "req_per_s": at[many]["req_per_s"]}
    return best


def _run(work: Path, quick: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Goal]]:
    concurrency = QUICK_CONCURRENCY if quick else CONCURRENCY
    rounds, seconds = (QUICK_ROUNDS, QUICK_SECONDS) if quick else (ROUNDS, SECONDS)
    venv = peers_venv.ensure()
    versions = peers_venv.versions(venv.python)
    load_start = os.getloadavg()
    store, models, floors = _models(work, QUICK_FLOOR_SECONDS if quick else FLOOR_SECONDS)
    classes = {"edge": 10, "mobilenet": mobilenet.CLASSES}
    with ExitStack() as stack:
        servers, ready_s = _start_servers(stack, work, store, list(models.values()), venv)
        bodies = _bodies(work, servers, models)
        runs: dict[tuple[str, str, str, int], list[tuple[Measured, float]]] = {}
        turn = 0
        for r in range(rounds):
            for m, served in models.items():
                for mode in MODES:
                    for c in concurrency:
                        turn += 1
                        order = SERVERS[turn % 3:] + SERVERS[:turn % 3]  # nobody always goes first
                        for s in order:
                            runs.setdefault((s, m, mode, c), []).append(
                                _measure(servers[s], served, bodies[s, m, mode], classes[m], c, seconds))
                        line = ", ".join(f"{s} {runs[s, m, mode, c][-1][0].per_s:.0f}/s" for s in SERVERS)
                        print(f"  round {r + 1}/{rounds} {m} {mode} c={c}: {line}", flush=True)
        load_end = os.getloadavg()
    table: dict[str, Any] = {s: {m: {mode: {f"c{c}": _summary(runs[s, m, mode, c]) for c in concurrency}
                                     for mode in MODES} for m in models} for s in SERVERS}
    goals, best = _goals(table, floors, list(models))
    metrics: dict[str, Any] = {
        "servers": table,
        "floor": floors,
        "best_peer": best,
        "best_peer_by_point": _best_by_point(table),
        "errors_seen": _first_errors(runs),
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in load_end],
        "servers_ready_s": ready_s,
        "peers_venv_s": round(venv.seconds, 1),
        "peers_venv_created_this_run": venv.created,
    }
    params: dict[str, Any] = {
        "quick": quick, "rounds": rounds, "seconds_per_point": seconds, "concurrency": list(concurrency),
        "modes": list(MODES), "intra_op_threads": THREADS, "inter_op_threads": 1,
        "batching": {"max_batch_size": {m: s.max_batch for m, s in models.items()},
                     "max_batch_size_from": "the floor's best batch size, measured first in this run",
                     "max_queue_delay_ms": QUEUE_DELAY_MS,
                     "fedge": "micro-batcher (a lone request runs inline)",
                     "triton": "dynamic batcher, 1 instance",
                     "kserve": "none (ModelServer has no batcher; sync predict, 1 uvicorn worker)"},
        "models": {m: {"name": s.name, "input_shape": s.shape, "bytes": s.file.stat().st_size}
                   for m, s in models.items()},
        "client": "bench/peers/load_client.py: 1 process per point, 1 keep-alive connection per request in flight,"
                  " tritonclient.http request encoding and response parsing",
        "peer_versions": versions,
        "peers_venv": str(venv.directory),
        "outputs": {"fedge": "probabilities (softmax)", "kserve": "logits", "triton": "logits"},
        "per_request_logging": "off in every server",
    }
    return params, metrics, goals


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("serving_peers", __doc__, argv,
                           "1 round, 1 and 32 in flight, 0.4 s a point (the real servers all the same)")
    started = time.perf_counter()
    try:
        with _sigterm_stops(), tempfile.TemporaryDirectory(prefix="serving-peers-") as tmp:
            params, metrics, goals = _run(Path(tmp), args.quick)
    except (peers_venv.PeersUnavailable, ServerFailed, BenchFailed, LoadClientError) as exc:
        raise SystemExit(f"serving_peers: {exc}") from None
    except KeyboardInterrupt:  # every server is stopped by now
        print("serving_peers: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    metrics["wall_s"] = round(time.perf_counter() - started, 1)
    path = write_result("serving_peers", params, metrics, goals, results_dir=args.results_dir)
    plot(metrics["servers"], metrics["floor"], list(params["models"]), list(MODES),
         (args.results_dir or RESULTS_DIR) / "serving_peers.png")
    print_goals("serving_peers", goals)
    print(f"serving_peers: wrote {path}")
    return path


if __name__ == "__main__":
    main()
