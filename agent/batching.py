"""Dynamic micro-batching for one model: a bounded priority queue and one worker thread.

Concurrent callers' rows are stacked into one ``session.run`` (up to
``max_batch_size`` rows, waiting at most ``max_queue_delay_ms`` after the first
arrives), which is where a CPU gets its throughput. ONNX Runtime releases the
GIL, so callers keep queueing while a batch runs. Higher priority goes first,
FIFO within a priority; a full queue refuses at once so the caller can offload
or answer "overloaded" instead of waiting.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The local queue is at its depth limit."""


class BatcherClosed(Exception):
    """The batcher stopped before this request could run."""


class Pending(Future[np.ndarray]):
    """A queued request's future; ``run_started`` (perf_counter) splits its wait from its run."""

    run_started: float | None = None


@dataclass(order=True)
class _Item:
    key: tuple[int, int]
    x: np.ndarray = field(compare=False)
    future: Pending = field(compare=False)
    enqueued: float = field(compare=False)


class MicroBatcher:
    """Runs ``run_batch`` on stacked requests; each caller's future gets its own rows."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int = 8,
                 max_queue_delay_ms: float = 2.0, max_queue_depth: int = 64, name: str = "model") -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self._delay_s = max_queue_delay_ms / 1000
        self.max_queue_depth = max_queue_depth
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closing = False
        self._service_ms_per_row = 0.0
        self._last_batch_rows = 0
        self._busy = False  # a batch (or an inline call) is running
        self.batches_run = 0
        self._worker = threading.Thread(target=self._loop, name=f"fedge-batch-{name}", daemon=True)
        self._worker.start()

    @property
    def busy(self) -> bool:
        """A batch (or a lone caller's inline run) is on the model right now."""
        with self._cond:
            return self._busy

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._heap)

    def estimated_wait_ms(self) -> float:
        """How long a new request would wait: queued rows times the recent per-row service time."""
        with self._cond:
            rows = sum(len(item.x) for item in self._heap)
        return rows * self._service_ms_per_row

    def submit(self, x: np.ndarray, priority: int = 5) -> Pending:
        """Queue ``x`` ([rows, ...]); raises QueueFull or BatcherClosed instead of blocking.

        A caller who finds the model idle and nobody queued runs it on its own thread,
        already done when this returns: no hand-off to the worker for a lone request.
        """
        future = Pending()
        with self._cond:
            if self._closing:
                raise BatcherClosed("the model is shutting down")
            inline = not self._busy and not self._heap and self._last_batch_rows <= 1
            if inline:
                self._busy = True
            elif len(self._heap) >= self.max_queue_depth:
                raise QueueFull(f"local queue is full ({self.max_queue_depth} waiting)")
            else:
                heapq.heappush(self._heap, _Item((-priority, next(self._seq)), x, future, time.monotonic()))
                self._cond.notify()
                return future
        future.set_running_or_notify_cancel()
        self._execute([_Item((-priority, 0), x, future, 0.0)])
        return future

    def close(self, drain: bool = True) -> None:
        """Stop taking requests; answer what is queued (or fail it when ``drain`` is False), then stop."""
        with self._cond:
            self._closing = True
            if not drain:
                for item in self._heap:
                    item.future.set_exception(BatcherClosed("the model shut down before running this request"))
                self._heap.clear()
            self._cond.notify_all()
        self._worker.join()

    def _take_batch(self) -> list[_Item] | None:
        """Wait for work, let a batch fill (bounded by the delay), and pop it; None when closed and empty."""
        with self._cond:
            while not self._heap or self._busy:  # one run on the model at a time, inline or batched
                if self._closing and not self._heap:
                    return None
                self._cond.wait()
            first = self._heap[0]
            deadline = first.enqueued + self._delay_s
            # A lone caller (last batch was one row, nothing else queued) runs at once: waiting for
            # company that is not coming would only add the delay to every request.
            alone = len(self._heap) == 1 and self._last_batch_rows <= 1
            while not alone and not self._closing and sum(len(i.x) for i in self._heap) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Item] = []
            rows = 0
            skipped: list[_Item] = []
            trailing = self._heap[0].x.shape[1:]
            while self._heap and rows < self.max_batch_size:
                item = heapq.heappop(self._heap)
                if item.x.shape[1:] != trailing or (batch and rows + len(item.x) > self.max_batch_size):
                    skipped.append(item)  # another shape, or too big to join: next batch
                    continue
                batch.append(item)
                rows += len(item.x)
            for item in skipped:
                heapq.heappush(self._heap, item)
            self._busy = True
            return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if live:
                self._execute(live)
            else:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _execute(self, live: list[_Item]) -> None:
        """Run one batch and hand each caller its rows; a failing run fails only its own requests."""
        started = time.perf_counter()
        for item in live:
            item.future.run_started = started
        try:
            stacked = live[0].x if len(live) == 1 else np.concatenate([item.x for item in live])
            outputs = self._run_batch(stacked)
        except Exception as exc:
            outputs = None
            for item in live:
                item.future.set_exception(exc)
        elapsed_ms = (time.perf_counter() - started) * 1000
        rows = sum(len(item.x) for item in live)
        with self._cond:
            self._busy = False
            self._last_batch_rows = rows
            self._service_ms_per_row = 0.8 * self._service_ms_per_row + 0.2 * (elapsed_ms / max(rows, 1))
            self.batches_run += 1
            self._cond.notify()
        if outputs is not None:
            offset = 0
            for item in live:
                item.future.set_result(outputs[offset:offset + len(item.x)])
                offset += len(item.x)
