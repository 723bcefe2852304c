"""What the agent counts: Prometheus metrics for /metrics, and rolling windows for heartbeats.

Each agent owns its own registry, so several agents in one process (tests,
benchmarks) never share counters.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def nearest_rank(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of non-empty ``values`` by nearest rank; values need not be sorted."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB, from /proc (None where there is no /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class RollingWindow:
    """The last ``size`` values of something, for percentiles and rates in heartbeats."""

    def __init__(self, size: int = 1024) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (q in 0..100), or None with no data."""
        with self._lock:
            values = list(self._values)
        return nearest_rank(values, q) if values else None

    def mean(self) -> float | None:
        with self._lock:
            return sum(self._values) / len(self._values) if self._values else None


class AgentMetrics:
    """Prometheus series of one agent, plus the windows its heartbeat reports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fedge_requests", "Answered requests by source", ["task", "source"],
                                registry=self.registry)
        self.offloads = Counter("fedge_offloads", "Requests sent to the cloud, by reason", ["task", "reason"],
                                registry=self.registry)
        self.degraded = Counter("fedge_degraded", "Answers marked degraded (cloud late, lost or refused)",
                                ["task"], registry=self.registry)
        self.errors = Counter("fedge_errors", "Requests answered with an error, by code", ["task", "code"],
                              registry=self.registry)
        self.latency = Histogram("fedge_latency_seconds", "End-to-end answer latency by path", ["task", "path"],
                                 buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.queue_depth = Gauge("fedge_queue_depth", "Requests waiting for the local model", ["task"],
                                 registry=self.registry)
        self.inflight = Gauge("fedge_offloads_inflight", "Offloads waiting for the cloud", registry=self.registry)
        self.broker_connected = Gauge("fedge_broker_connected", "1 when the MQTT connection is up",
                                      registry=self.registry)
        self.offload_window = RollingWindow()  # 1.0 per offloaded request, 0.0 per local one
        self.local_ms = RollingWindow()
        self.offload_ms = RollingWindow()

        self._answer_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def answered(self, task: str, source: str, path: str, degraded: bool, seconds: float) -> None:
        """Count one answer; the labelled children are looked up once per (task, source, path), not per request."""
        key = (task, source, path)
        series = self._answer_series.get(key)
        if series is None:
            series = self._answer_series[key] = (self.requests.labels(task, source), self.latency.labels(task, path))
        series[0].inc()
        series[1].observe(seconds)
        if degraded:
            self.degraded.labels(task).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
