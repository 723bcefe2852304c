"""Agents on this machine: a shipped device profile pointed at a private broker, and inputs streamed through it.

``make demo`` and ``fedge-cloud fl loop`` run real ``Agent`` objects in-process from the
profiles in edge_profiles/; these are the overrides that make a production profile
(TLS, a password file, /var/lib/fedge) run beside a private Mosquitto, and the tally of
what the agents answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.agent import Agent
from agent.protocol import InferReply, InferRequest, ProtocolError, Source
from cloud.local.mosquitto import Mosquitto


def local_overrides(broker: Mosquitto, state: Path) -> dict[str, str]:
    """``FEDGE__*`` overrides: the private broker in clear, no credentials, state under ``state``."""
    return {"FEDGE__BROKER__HOST": broker.host, "FEDGE__BROKER__PORT": str(broker.port), "FEDGE__BROKER__TLS": "null",
            "FEDGE__BROKER__USERNAME": "null", "FEDGE__BROKER__PASSWORD_FILE": "null",
            "FEDGE__BROKER__PASSWORD_ENV": "null", "FEDGE__STORAGE__DIRECTORY": str(state)}


@dataclass
class Tally:
    """What agents answered: requests, errors, offloads, degraded answers, correct ones and latencies."""

    requests: int = 0
    errors: int = 0
    offloaded: int = 0
    degraded: int = 0
    correct: int = 0
    local_ms: list[float] = field(default_factory=list)
    cloud_ms: list[float] = field(default_factory=list)

    @property
    def offload_rate(self) -> float:
        return self.offloaded / max(1, self.requests)

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.requests)

    @classmethod
    def summed(cls, tallies: Iterable[Tally]) -> Tally:
        """One tally of everything ``tallies`` counted."""
        whole = cls()
        for t in tallies:
            whole.requests, whole.errors = whole.requests + t.requests, whole.errors + t.errors
            whole.offloaded, whole.degraded = whole.offloaded + t.offloaded, whole.degraded + t.degraded
            whole.correct += t.correct
            whole.local_ms += t.local_ms
            whole.cloud_ms += t.cloud_ms
        return whole

    def add(self, reply: InferReply, label: int, elapsed_ms: float) -> None:
        self.requests += 1
        self.correct += int(reply.outputs["probabilities"].argmax() == label)
        self.degraded += int(reply.degraded)
        if reply.source is Source.EDGE:
            self.local_ms.append(elapsed_ms)
        else:
            self.offloaded += 1
            self.cloud_ms.append(elapsed_ms)


def stream(agent: Agent, task: str, x: np.ndarray, y: np.ndarray, tally: Tally, callers: int = 4,
           stop: threading.Event | None = None) -> None:
    """Every row of ``x`` through ``agent.infer``, one row a request, from ``callers`` threads; counted in ``tally``.

    ``stop``: once set, no caller sends another request (what is in flight still gets its answer).
    """
    lock = threading.Lock()

    def caller(k: int) -> None:
        for i in range(k, len(x), callers):
            if stop is not None and stop.is_set():
                return
            started = time.perf_counter()
            try:
                reply = agent.infer(InferRequest(task, {"input": x[i:i + 1]}))
            except ProtocolError:
                with lock:
                    tally.errors += 1
                continue
            with lock:
                tally.add(reply, int(y[i]), (time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
