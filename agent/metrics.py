"""What the agent counts: Prometheus metrics for /metrics, and rolling windows for heartbeats.

Each agent owns its own registry, so several agents in one process (tests,
benchmarks) never share counters.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

OFFLOAD_WINDOW = 1024
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
    """The last ``size`` values of something, for percentiles and rates in heartbeats.

    No lock: a deque's append is thread-safe and ``copy`` takes a consistent snapshot,
    so the hot path pays for an append only.
    """

    def __init__(self, size: int = 1024) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self.add = self._values.append

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (q in 0..100), or None with no data."""
        values = list(self._values.copy())
        return nearest_rank(values, q) if values else None

    def mean(self) -> float | None:
        values = self._values.copy()
        return sum(values) / len(values) if values else None


class AnswerStats(Collector):
    """Answers by (task, source, path) with their latency histogram, as Prometheus families at scrape time.

    prometheus_client's labelled Counter and Histogram take a lock per series per update,
    about 5 µs an answer: a fifth of the whole local path of a small edge model. Here an
    answer costs one lock and three integer updates, and the scrape does the summing.
    Families: ``fedge_requests{task,source}``, ``fedge_latency_seconds{task,path}`` and
    ``fedge_degraded{task}`` (path is the source, or "degraded").
    """

    def __init__(self, buckets_s: tuple[float, ...]) -> None:
        self._bounds = buckets_s
        self._series: dict[tuple[str, str, str], list[float]] = {}  # key -> [bucket counts..., +Inf count, sum]
        self._lock = threading.Lock()

    def add(self, task: str, source: str, path: str, seconds: float) -> None:
        bucket = bisect_left(self._bounds, seconds)  # the first bound >= seconds ("le"); len(bounds) is +Inf
        with self._lock:
            series = self._series.get((task, source, path))
            if series is None:
                series = self._series[(task, source, path)] = [0.0] * (len(self._bounds) + 2)
            series[bucket] += 1
            series[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            series = {key: list(values) for key, values in self._series.items()}
        requests: dict[tuple[str, ...], float] = {}
        latency: dict[tuple[str, str], list[float]] = {}
        for (task, source, path), values in series.items():
            requests[(task, source)] = requests.get((task, source), 0.0) + sum(values[:-1])
            merged = latency.get((task, path), [0.0] * len(values))
            latency[(task, path)] = [a + b for a, b in zip(merged, values, strict=True)]
        degraded: dict[tuple[str, ...], float] = {
            (task,): sum(values[:-1]) for (task, path), values in latency.items() if path == "degraded"
        }
        yield self._counter("fedge_requests", "Answered requests by source", ["task", "source"], requests)
        yield self._counter("fedge_degraded", "Answers marked degraded (cloud late, lost or refused)", ["task"],
                            degraded)
        histogram = HistogramMetricFamily("fedge_latency_seconds", "End-to-end answer latency by path",
                                          labels=["task", "path"])
        for labels, values in sorted(latency.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*map(floatToGoString, self._bounds), "+Inf"), values[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram.add_metric(list(labels), buckets, values[-1])
        yield histogram

    @staticmethod
    def _counter(name: str, help_text: str, labels: list[str], values: dict[tuple[str, ...], float]) -> Metric:
        family = CounterMetricFamily(name, help_text, labels=labels)
        for key, value in sorted(values.items()):
            family.add_metric(list(key), value)
        return family


class AgentMetrics:
    """Prometheus series of one agent, plus the windows its heartbeat reports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.offloads = Counter("fedge_offloads", "Requests sent to the cloud, by reason", ["task", "reason"],
                                registry=self.registry)
        self.errors = Counter("fedge_errors", "Requests answered with an error, by code", ["task", "code"],
                              registry=self.registry)
        self.audits = Counter("fedge_audits", "Confident local answers sent to the cloud in the background, by"
                              " outcome (kept, late, refused, ...)", ["task", "outcome"], registry=self.registry)
        self.audit_agreement = Gauge("fedge_audit_agreement", "Share of recent audits where the cloud's top class was"
                                     " the local answer's", ["task"], registry=self.registry)
        self.degraded = Counter("fedge_degraded_by_cause", "Local answers marked degraded, by why the cloud's was not"
                                " had", ["task", "cause"], registry=self.registry)
        self.answers = AnswerStats(_LATENCY_BUCKETS_S)
        self.registry.register(self.answers)
        self.queue_depth = Gauge("fedge_queue_depth", "Requests waiting for the local model", ["task"],
                                 registry=self.registry)
        self.inflight = Gauge("fedge_offloads_inflight", "Offloads waiting for the cloud", registry=self.registry)
        self.broker_connected = Gauge("fedge_broker_connected", "1 when the MQTT connection is up",
                                      registry=self.registry)
        self.offload_window = RollingWindow(OFFLOAD_WINDOW)  # 1.0 per offloaded request, 0.0 per local one
        offload_rate = Gauge("fedge_offload_rate", f"Share of the last {OFFLOAD_WINDOW} offload decisions sent to the"
                             " cloud (the heartbeat's offload_rate)", registry=self.registry)
        offload_rate.set_function(lambda: self.offload_window.mean() or 0.0)
        self.local_ms = RollingWindow()
        self.offload_ms = RollingWindow()

    def degraded_counts(self) -> dict[str, dict[str, int]]:
        """``{task: {cause: count}}`` of degraded answers, for the heartbeat."""
        counts: dict[str, dict[str, int]] = {}
        for family in self.degraded.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts.setdefault(sample.labels["task"], {})[sample.labels["cause"]] = int(sample.value)
        return counts

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
