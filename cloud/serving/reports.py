"""The workers' reports, folded into the cloud status agents read and the live metrics the registry keeps.

Every worker publishes a report to ``{prefix}/cloud/workers/{id}`` each
interval (stats.py). A coordinator keeps the latest report of every worker it
hears from, on any serve host of the share group, so each host's coordinator
publishes the same whole-cloud status instead of only its own workers'.

Per task the status carries the queue depth (summed over fresh workers) and
p50/p99 of the time requests spend in a worker (the worst fresh worker's, so
agents back off when any worker is slow).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection
from typing import Any

log = logging.getLogger(__name__)
OVERLOADED_AT = 0.8  # share of the total queue capacity in use
Report = dict[str, Any]
ModelKey = tuple[str, str, int]  # task, name, version


class WorkerReports:
    """The latest report of each worker, kept while fresh; written by paho's thread, read by the status loop."""

    def __init__(self, fresh_for_s: float) -> None:
        self.fresh_for_s = fresh_for_s
        self._reports: dict[str, tuple[float, Report]] = {}  # worker id -> (received, report)
        self._lock = threading.Lock()

    def add(self, payload: bytes | bytearray) -> None:
        """Keep one report, or forget a leaving worker; ValueError when it is not a JSON object naming its worker."""
        try:
            report = json.loads(payload)
            worker_id = str(report["worker_id"])
        except (KeyError, TypeError) as exc:  # JSON errors and undecodable bytes are ValueErrors already
            raise ValueError(f"no worker_id in the report ({exc})") from None
        with self._lock:
            if report.get("leaving"):  # its last report (worker.py's fence): gone now, not when it goes stale
                self._reports.pop(worker_id, None)
            else:
                self._reports[worker_id] = (time.monotonic(), report)

    def fresh(self, exclude: Collection[str] = ()) -> dict[str, Report]:
        """Worker id -> report, for reports newer than ``fresh_for_s`` (older ones are forgotten)."""
        fresh_after = time.monotonic() - self.fresh_for_s
        with self._lock:
            for worker_id in [w for w, (seen, _) in self._reports.items() if seen < fresh_after]:
                del self._reports[worker_id]
            return {w: r for w, (_, r) in self._reports.items() if w not in exclude}


def cloud_status(reports: dict[str, Report], default_max_queue: int) -> dict[str, Any]:
    """The retained status document for the workers whose reports are given (docs/PROTOCOL.md)."""
    depth = sum(_int(r.get("queue_depth")) for r in reports.values())
    capacity = max(1, sum(_int(r.get("max_queue")) or default_max_queue for r in reports.values()))
    return {"healthy": bool(reports), "overloaded": depth >= OVERLOADED_AT * capacity,
            "workers_alive": len(reports), "queue_depth": depth, "tasks": task_status(list(reports.values())),
            "served": {w: r.get("served", 0) for w, r in reports.items()}, "sent_at": time.time()}


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def task_status(reports: list[Report]) -> dict[str, dict[str, Any]]:
    """Per task: queue depth summed over workers, the worst worker's p50/p99, and decisions summed."""
    tasks: dict[str, dict[str, Any]] = {}
    for report in reports:
        try:
            for task, doc in (report.get("tasks") or {}).items():
                _fold(tasks.setdefault(task, {"queue_depth": 0, "p50_ms": None, "p99_ms": None, "decisions": {}}), doc)
        except (AttributeError, TypeError, ValueError):
            log.warning("ignored the unreadable task section of worker %s's report", report.get("worker_id"))
    return tasks


def _fold(into: dict[str, Any], doc: dict[str, Any]) -> None:
    into["queue_depth"] += int(doc.get("queue_depth") or 0)
    for key in ("p50_ms", "p99_ms"):
        if doc.get(key) is not None:
            into[key] = max(float(doc[key]), into[key] or 0.0)
    for model, reasons in (doc.get("decisions") or {}).items():
        counts = into["decisions"].setdefault(model, {})
        for reason, n in reasons.items():
            counts[reason] = counts.get(reason, 0) + int(n)


def live_metrics(reports: dict[str, Report]) -> dict[ModelKey, dict[str, float]]:
    """Per served model version: ``latency_ms_b{n}``, the mean over workers of their run-time EWMA at batch n.

    The registry's metrics are flat names -> numbers, hence one key per batch size.
    """
    samples: dict[ModelKey, dict[str, list[float]]] = {}
    for report in reports.values():
        try:
            for task, doc in (report.get("tasks") or {}).items():
                for name, model in (doc.get("models") or {}).items():
                    by_batch = samples.setdefault((task, name, int(model["version"])), {})
                    for batch, ms in (model.get("latency_ms") or {}).items():
                        by_batch.setdefault(f"latency_ms_b{int(batch)}", []).append(float(ms))
        except (AttributeError, KeyError, TypeError, ValueError):
            log.warning("ignored the unreadable model section of worker %s's report", report.get("worker_id"))
    return {key: {k: round(sum(v) / len(v), 3) for k, v in sorted(by_batch.items())}
            for key, by_batch in samples.items() if by_batch}
