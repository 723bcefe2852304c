"""A worker's request queue: highest priority first, earliest deadline first within a priority.

Bounded: when full, the lowest-priority request (the newest among equals) is
shed with an ``overloaded`` answer, so a burst of background work cannot push
out urgent requests. Requests whose deadline passed are never run: they come
out of ``take`` as expired, to be answered ``expired``. A batch holds jobs
for one model (chosen per request when it is queued) and one input shape.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agent.protocol import InferRequest


@dataclass(order=True)
class Job:
    """One request waiting for a model, ordered by (-priority, deadline, arrival)."""

    key: tuple[int, float, int]
    request: InferRequest = field(compare=False)
    deadline: float = field(compare=False)  # time.monotonic() after which it is not run
    reply_to: Any = field(compare=False)  # what the worker needs to answer (topic, properties)
    arrived: float = field(compare=False, default_factory=time.monotonic)
    model: str = field(compare=False, default="")  # the model chosen to run it


def _batch_key(job: Job) -> tuple[str, str, tuple[tuple[int, ...], ...]]:
    """Jobs stack when they are for one model and alike past the batch axis in every tensor."""
    return job.request.task, job.model, tuple(x.shape[1:] for x in job.request.inputs.values())


class JobQueue:
    """Priority + EDF queue with shedding by priority; ``take`` batches jobs of one model."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self._heap: list[Job] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def depths(self) -> Counter[tuple[str, str]]:
        """Jobs waiting per (task, model)."""
        with self._cond:
            return Counter((j.request.task, j.model) for j in self._heap)

    def put(self, request: InferRequest, deadline: float, reply_to: Any, model: str = "") -> Job | None:
        """Queue a job for ``model``; returns the job shed to make room (possibly this one), or None."""
        job = Job((-request.priority, deadline, next(self._seq)), request, deadline, reply_to, model=model)
        with self._cond:
            heapq.heappush(self._heap, job)
            shed = None
            if len(self._heap) > self.max_depth:
                shed = max(self._heap)  # lowest priority, latest deadline, newest
                self._heap.remove(shed)
                heapq.heapify(self._heap)
            self._cond.notify()
            return shed

    def take(self, max_batch: int, max_delay_s: float) -> tuple[list[Job], list[Job]] | None:
        """Block for work; return (runnable jobs of one model, expired jobs), or None once closed and empty."""
        with self._cond:
            while not self._heap:
                if self._closed:
                    return None
                self._cond.wait()
            first_arrival = time.monotonic()
            while len(self._heap) < max_batch and not self._closed:
                remaining = first_arrival + max_delay_s - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    break
            now = time.monotonic()
            expired = [j for j in self._heap if j.deadline <= now]
            live = [j for j in self._heap if j.deadline > now]
            batch: list[Job] = []
            if live:
                key = _batch_key(min(live))
                for job in sorted(live):
                    if len(batch) < max_batch and _batch_key(job) == key:
                        batch.append(job)
            taken = {id(j) for j in batch} | {id(j) for j in expired}
            self._heap = [j for j in self._heap if id(j) not in taken]
            heapq.heapify(self._heap)
            return batch, expired

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
