"""Offload round trip: the agent answering from the cloud, against raw paho QoS 1 ping-pong doing the same work.

Same broker, same 160-byte payload (one MNIST-1D input), in the same run. The
baseline is bench/raw_mqtt's ping-pong with its fastest socket settings
(TCP_NODELAY, which agent.mqtt_client always uses), whose client runs the same
bare edge model (`session.run`) before each ping: an agent decides to offload
only after its local model ran. The cloud is the reference worker with a trivial
model (constant probabilities), so the ratio is what the agent's path costs on
top of transport and model: confidence, encoding, the in-flight table, decoding
and checks. Goal: p50 ratio <= 1.2 (the bare transport ratio is recorded too).
Throughput is reported at 1, 8 and 64 requests in flight; here the agent and the
worker share one Python process (and the broker the two cores), so that
throughput is a floor, not what separate machines would see.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.agent import Agent
from agent.metrics import nearest_rank
from agent.model_store import ModelStore
from agent.protocol import InferRequest, Source
from agent.session import open_session
from bench.agent_rig import calls_per_second, running_agent
from bench.raw_mqtt import Case, PingPong
from bench.results_file import Goal, bench_arguments, write_result
from bench.zoo_models import train_zoo
from cloud.local.mosquitto import Mosquitto
from cloud.local.reference_worker import ReferenceWorker

ALWAYS = {"mode": "threshold", "metric": "max_prob", "threshold": 1.0, "max_inflight": 64, "max_queue_depth": 256,
          "local_latency_slo_ms": 1000, "default_deadline_ms": 5000}


def _round_trips(agent: Agent, x: np.ndarray, count: int) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        reply = agent.infer(InferRequest("mnist1d", {"input": x[i % len(x): i % len(x) + 1]}))
        times.append((time.perf_counter() - started) * 1000)
        if reply.source is not Source.CLOUD:
            raise RuntimeError(f"request {i} was answered by {reply.source.value}, not the cloud")
    return times


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("offload_rtt", __doc__, argv)
    count, seconds = (100, 0.5) if args.quick else (3000, 5.0)
    x = np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        store = ModelStore(Path(tmp) / "store")
        train_zoo(store, "mnist1d", quick=True, roles=("edge",))
        edge = open_session(store.get("mnist1d", "mnist1d-edge").model_path, intra_op_threads=1)
        row = x[:1]
        raw = PingPong(broker, nodelay=True)
        try:
            case = Case(qos=1, payload_bytes=row.nbytes)
            raw_rtts = raw.round_trips(case, count)
            model_rtts = raw.round_trips(case, count, lambda: edge.run(None, {"input": row}))
        finally:
            raw.close()
        worker = ReferenceWorker(lambda rows: np.full((len(rows), 10), 0.1, np.float32)).start(broker.host, broker.port)
        try:
            with running_agent(store.root, Path(tmp) / "state", broker=broker, offload=ALWAYS,
                               batching={"max_batch_size": 8, "max_queue_delay_ms": 1}) as agent:
                assert agent.uplink is not None
                while agent.uplink.cloud_status is None:
                    time.sleep(0.01)
                _round_trips(agent, x, 50)  # warm-up
                agent_rtts = _round_trips(agent, x, count)
                for inflight in (1, 8, 64):
                    rate = calls_per_second(lambda k: agent.infer(InferRequest("mnist1d", {"input": x[k:k + 1]})),
                                            inflight, seconds)
                    metrics[f"agent_per_s_{inflight}_inflight"] = round(rate, 1)
        finally:
            worker.stop()
    metrics.update({
        "raw_p50_ms": round(statistics.median(raw_rtts), 4), "raw_p99_ms": round(nearest_rank(raw_rtts, 99), 4),
        "raw_with_model_p50_ms": round(statistics.median(model_rtts), 4),
        "raw_with_model_p99_ms": round(nearest_rank(model_rtts, 99), 4),
        "agent_p50_ms": round(statistics.median(agent_rtts), 4), "agent_p99_ms": round(nearest_rank(agent_rtts, 99), 4),
    })
    metrics["p50_ratio_vs_raw"] = round(metrics["agent_p50_ms"] / metrics["raw_p50_ms"], 3)
    metrics["p99_ratio_vs_raw"] = round(metrics["agent_p99_ms"] / metrics["raw_p99_ms"], 3)
    metrics["p50_ratio_vs_raw_with_model"] = round(metrics["agent_p50_ms"] / metrics["raw_with_model_p50_ms"], 3)
    goals = {"p50_ratio_vs_raw_with_model": Goal(metrics["p50_ratio_vs_raw_with_model"], "<=", 1.2)}
    path = write_result("offload_rtt", {"payload_bytes": int(x[:1].nbytes), "requests": count, "seconds": seconds,
                                        "qos": 1, "tcp_nodelay": True}, metrics, goals, results_dir=args.results_dir)
    print(f"offload_rtt: {metrics}\noffload_rtt: wrote {path}")
    return path


if __name__ == "__main__":
    main()
