"""In-process agents for benchmarks: the real Agent class over a store trained in the same run."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from agent.agent import Agent
from agent.profile import parse_profile
from cloud.local.mosquitto import Mosquitto, free_port


def agent_profile(state: Path, *, batching: dict[str, Any], broker: Mosquitto | None = None,
                  offload: dict[str, Any] | None = None, model: str = "mnist1d-edge", threads: int = 1,
                  task: str = "mnist1d", input_shape: tuple[int, ...] = (-1, 40)) -> Any:
    doc: dict[str, Any] = {
        "device": {"id": "bench", "kind": "bench"},
        "hardware": {"execution_providers": [{"type": "cpu"}], "intra_op_threads": threads},
        "models": {task: {"name": model, "input": {"shape": list(input_shape)}, "batching": batching}},
        "api": {"enabled": False},
        "storage": {"directory": str(state), "samples": {"enabled": False}},
        "federated": {"enabled": False},
        "metrics": {"enabled": False},
    }
    if broker is not None:
        doc["broker"] = {"host": broker.host, "port": broker.port}
    if offload is not None:
        doc["offload"] = {task: offload}
    return parse_profile(yaml.safe_dump(doc), "bench-profile.yaml", env={})


@contextmanager
def running_agent(store_root: Path, state: Path, **options: Any) -> Iterator[Agent]:
    with Agent(agent_profile(state, **options), store_root=store_root, api_port=free_port()) as agent:
        if agent.uplink is not None:
            agent.uplink.wait_connected(10)
        yield agent


def calls_per_second(call: Callable[[int], object], callers: int, seconds: float) -> float:
    """Completed ``call(k)`` per second with ``callers`` threads (k = the caller's index) looping for ``seconds``."""
    counts = [0] * callers
    start_line = threading.Barrier(callers + 1)
    stop = threading.Event()

    def loop(k: int) -> None:
        start_line.wait()
        while not stop.is_set():
            call(k)
            counts[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    start_line.wait()
    started = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def interleaved_call_us(paths: dict[str, Callable[[int], object]], blocks: int, block: int) -> dict[str, float]:
    """Median µs per call of each path, the paths taking turns in blocks of ``block`` calls.

    Each block runs one path back to back (its steady state, caches and all); the turns (reversed every
    other block) make the machine's drift (±10 % from one 3-second round to the next here) hit every path alike.
    """
    per_call: dict[str, list[float]] = {name: [] for name in paths}
    turns = list(paths.items())
    for b in range(blocks):
        for name, call in turns if b % 2 == 0 else turns[::-1]:
            started = time.perf_counter()
            for k in range(block):
                call(k)
            per_call[name].append((time.perf_counter() - started) / block)
    return {name: statistics.median(times) * 1e6 for name, times in per_call.items()}
