"""The agent's answer statistics expose exactly what prometheus_client's own Counter and Histogram would."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from agent.metrics import _LATENCY_BUCKETS_S, AgentMetrics, AnswerStats, RollingWindow

ANSWERS = [  # (task, source, path, seconds): bounds themselves, between them, past the last, a degraded answer
    ("mnist1d", "edge", "edge", 0.0005), ("mnist1d", "edge", "edge", 0.0007), ("mnist1d", "cloud", "cloud", 0.02),
    ("mnist1d", "edge", "degraded", 1.2), ("digits", "fused", "fused", 9.0), ("mnist1d", "edge", "edge", 0.0),
]


def _lines(registry: CollectorRegistry) -> set[str]:
    return {line for line in generate_latest(registry).decode().splitlines()
            if line and not line.startswith("#") and "_created" not in line}


def test_answer_stats_expose_what_prometheus_client_would() -> None:
    ours = CollectorRegistry()
    stats = AnswerStats(_LATENCY_BUCKETS_S)
    ours.register(stats)
    theirs = CollectorRegistry()
    requests = Counter("fedge_requests", "", ["task", "source"], registry=theirs)
    latency = Histogram("fedge_latency_seconds", "", ["task", "path"], buckets=_LATENCY_BUCKETS_S, registry=theirs)
    degraded = Counter("fedge_degraded", "", ["task"], registry=theirs)
    for task, source, path, seconds in ANSWERS:
        stats.add(task, source, path, seconds)
        requests.labels(task, source).inc()
        latency.labels(task, path).observe(seconds)
        if path == "degraded":
            degraded.labels(task).inc()
    assert _lines(ours) == _lines(theirs)
    assert 'fedge_latency_seconds_bucket{le="0.0005",path="edge",task="mnist1d"} 2.0' in _lines(ours)


def test_answer_stats_lose_no_count_under_concurrent_callers() -> None:
    stats = AnswerStats(_LATENCY_BUCKETS_S)
    registry = CollectorRegistry()
    registry.register(stats)

    def answer() -> None:
        for _ in range(5000):
            stats.add("t", "edge", "edge", 0.001)

    threads = [threading.Thread(target=answer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 'fedge_requests_total{source="edge",task="t"} 20000.0' in _lines(registry)


def test_rolling_window_keeps_the_last_values() -> None:
    window = RollingWindow(size=3)
    assert window.mean() is None and window.percentile(50) is None
    for value in (10.0, 1.0, 2.0, 3.0):
        window.add(value)
    assert window.mean() == 2.0 and window.percentile(100) == 3.0 and window.percentile(0) == 1.0


def test_offload_rate_gauge_reads_the_heartbeat_window() -> None:
    metrics = AgentMetrics()
    assert "fedge_offload_rate 0.0" in _lines(metrics.registry)
    for offloaded in (1.0, 0.0, 0.0, 0.0):
        metrics.offload_window.add(offloaded)
    assert "fedge_offload_rate 0.25" in _lines(metrics.registry)
