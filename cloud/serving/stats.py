"""What a worker counts and reports: answers by outcome, model decisions, and per-task latency.

The report goes to ``{prefix}/cloud/workers/{id}`` every interval; the
coordinator folds the reports into the retained cloud status agents read.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from agent.metrics import RollingWindow
from cloud.serving.selection import Reason
from cloud.serving.served import ServedModel


class WorkerStats:
    """Counters and windows of one worker; written by its two threads, read by the status loop."""

    def __init__(self) -> None:
        self.served = self.expired = self.shed = self.errors = 0
        self._decisions: Counter[tuple[str, str, str]] = Counter()
        self._latency: dict[str, RollingWindow] = {}
        self._lock = threading.Lock()

    def count(self, outcome: str) -> None:
        """One more ``expired``, ``shed`` or ``errors`` answer."""
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)

    def decided(self, task: str, model: str, reason: Reason) -> None:
        with self._lock:
            self._decisions[(task, model, reason.value)] += 1

    def answered(self, task: str, total_ms: float) -> None:
        """A request answered with outputs after ``total_ms`` in the worker (queue + run)."""
        with self._lock:
            self.served += 1
            window = self._latency.setdefault(task, RollingWindow())
        window.add(total_ms)

    def decisions(self, task: str) -> dict[str, dict[str, int]]:
        """Model -> reason -> count, for one task."""
        with self._lock:
            found: dict[str, dict[str, int]] = {}
            for (t, model, reason), n in self._decisions.items():
                if t == task:
                    found.setdefault(model, {})[reason] = n
            return found

    def report(self, worker_id: str, models: dict[str, list[ServedModel]], depths: Counter[tuple[str, str]],
               max_queue: int) -> dict[str, Any]:
        """The status report.

        Totals and queue capacity, then per task its queue depth, p50/p99, models (with their run-time
        EWMAs) and decisions.
        """
        tasks = {}
        for task, served in models.items():
            window = self._latency.get(task)
            tasks[task] = {
                "queue_depth": sum(n for (t, _), n in depths.items() if t == task),
                "p50_ms": window.percentile(50) if window else None,
                "p99_ms": window.percentile(99) if window else None,
                "models": {m.name: m.describe() for m in served},
                "decisions": self.decisions(task),
            }
        return {"worker_id": worker_id, "queue_depth": sum(depths.values()), "max_queue": max_queue,
                "served": self.served,
                "expired": self.expired, "shed": self.shed, "errors": self.errors, "tasks": tasks,
                "sent_at": time.time()}
