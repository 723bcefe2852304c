"""Dynamic micro-batching for one model: a bounded priority queue and one worker thread.

Concurrent callers' rows are stacked into one ``session.run`` (up to
``max_batch_size`` rows, waiting at most ``max_queue_delay_ms`` after the first
arrives), which is where a CPU gets its throughput. A request is one array per
model input (agent/feeds.py ``Rows``), stacked input by input; the run's outputs
are split back the same way. ONNX Runtime releases the
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
from dataclasses import dataclass, field
from typing import NamedTuple

from agent.feeds import Rows, sliced, stacked
from agent.latch import Latch


class QueueFull(Exception):
    """The local queue is at its depth limit."""


class BatcherClosed(Exception):
    """The batcher stopped before this request could run."""


class Ran(NamedTuple):
    """One request's rows and where its time went: waiting for the model, then on it."""

    outputs: Rows
    queue_s: float
    run_s: float


class Pending(Latch[Rows]):
    """A queued request's result, and whether its caller still wants it.

    ``run_started`` (perf_counter) splits the caller's wait from the model's run.
    """

    __slots__ = ("_state", "run_started")

    def __init__(self) -> None:
        super().__init__()
        self._state = "queued"  # -> running | cancelled
        self.run_started: float | None = None

    def claim(self) -> bool:
        """The worker takes the request; False if its caller already gave up on it."""
        if self._state == "cancelled":
            return False
        self._state = "running"
        return True

    def cancel(self) -> bool:
        """The caller gives up; the worker skips it unless it is already running."""
        if self._state == "queued":
            self._state = "cancelled"
        return self._state == "cancelled"


@dataclass(order=True)
class _Item:
    key: tuple[int, int]
    x: Rows = field(compare=False)
    future: Pending = field(compare=False)
    enqueued: float = field(compare=False)

    @property
    def rows(self) -> int:
        return len(self.x[0])

    @property
    def trailing(self) -> tuple[tuple[int, ...], ...]:
        """Each input's shape past the batch axis: only requests alike in all of them stack."""
        return tuple(a.shape[1:] for a in self.x)


class MicroBatcher:
    """Runs ``run_batch`` on stacked requests; each caller's future gets its own rows."""

    def __init__(self, run_batch: Callable[[Rows], Rows], *, max_batch_size: int = 8,
                 max_queue_delay_ms: float = 2.0, max_queue_depth: int = 64, name: str = "model") -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self._delay_s = max_queue_delay_ms / 1000
        self.max_queue_depth = max_queue_depth
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        # Hot paths take the plain lock (no Python-level Condition.__enter__); waits use the condition on it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closing = False
        self._service_ms_per_row = 0.0
        self._queued_rows = 0  # rows in the heap, kept as a count so nobody sums the heap under the lock
        self._last_batch_rows = 0
        self._fill_rows = max_batch_size  # rows the worker waits for while a batch fills (wake it then)
        self._busy = False  # a batch (or an inline call) is running
        self.batches_run = 0
        self._worker = threading.Thread(target=self._loop, name=f"fedge-batch-{name}", daemon=True)
        self._worker.start()

    @property
    def busy(self) -> bool:
        """A batch (or a lone caller's inline run) is on the model right now."""
        with self._lock:
            return self._busy

    @property
    def depth(self) -> int:
        with self._lock:
            return len(self._heap)

    def load(self) -> tuple[int, float]:
        """Queued requests and how long a new one would wait (queued rows times the recent per-row time), in ms."""
        with self._lock:
            return len(self._heap), self._queued_rows * self._service_ms_per_row

    def submit(self, x: Rows, priority: int = 5) -> Pending:
        """Queue ``x`` (one [rows, ...] array per input) for the worker; raises QueueFull or BatcherClosed instead of blocking."""
        future = Pending()
        with self._lock:
            self._enqueue(x, priority, future)
        return future

    def call(self, x: Rows, priority: int = 5, timeout_s: float | None = None) -> Ran:
        """Run ``x`` and wait for its rows (TimeoutError after ``timeout_s``, the request is then dropped).

        A caller who finds the model idle and nobody queued runs it on its own thread: no
        hand-off to the worker and no future for a lone request, which is most requests on
        a device.
        """
        with self._lock:
            inline = not self._busy and not self._heap and self._last_batch_rows <= 1
            if inline:
                if self._closing:
                    raise BatcherClosed("the model is shutting down")
                self._busy = True
            else:
                future = Pending()
                self._enqueue(x, priority, future)
        if inline:
            started = time.perf_counter()
            try:
                outputs = self._run_batch(x)
            finally:
                self._finished(len(x[0]), started)
            return Ran(outputs, 0.0, time.perf_counter() - started)
        return self.wait(future, time.perf_counter(), timeout_s)

    @staticmethod
    def wait(future: Pending, queued: float, timeout_s: float | None = None) -> Ran:
        """A submitted request's rows, queued at ``queued`` (perf_counter); TimeoutError drops it."""
        try:
            outputs = future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise
        done = time.perf_counter()
        run_started = future.run_started or queued
        return Ran(outputs, run_started - queued, done - run_started)

    def _enqueue(self, x: Rows, priority: int, future: Pending) -> None:
        """Push one request (the condition's lock held)."""
        if self._closing:
            raise BatcherClosed("the model is shutting down")
        item = _Item((-priority, next(self._seq)), x, future, time.monotonic())
        if len(self._heap) >= self.max_queue_depth:
            self._shed_for(item)
        heapq.heappush(self._heap, item)
        self._queued_rows += item.rows
        # Wake the worker only when it has something to do: first work, or the rows it waits for. A
        # wake-up per arrival would cost it a GIL hand-off for every row while a batch fills.
        if len(self._heap) == 1 or self._queued_rows >= self._fill_rows:
            self._cond.notify()

    def _shed_for(self, item: _Item) -> None:
        """Make room in a full queue for a request of higher priority than the lowest queued, or refuse it.

        The lowest-priority, newest request waiting is failed with QueueFull (its caller answers
        ``overloaded``), so under overload the most important requests are the ones still served.
        """
        lowest = max(self._heap)
        if lowest <= item:  # nothing waits at a lower priority than this request
            raise QueueFull(f"local queue is full ({self.max_queue_depth} waiting)")
        self._heap.remove(lowest)
        heapq.heapify(self._heap)
        self._queued_rows -= lowest.rows
        lowest.future.set_exception(QueueFull(f"local queue is full ({self.max_queue_depth} waiting) and a request"
                                              " of higher priority took this one's place"))

    def close(self, drain: bool = True) -> None:
        """Stop taking requests; answer what is queued (or fail it when ``drain`` is False), then stop."""
        with self._cond:
            self._closing = True
            if not drain:
                for item in self._heap:
                    item.future.set_exception(BatcherClosed("the model shut down before running this request"))
                self._heap.clear()
                self._queued_rows = 0
            self._cond.notify_all()
        self._worker.join()

    def _take_batch(self) -> list[_Item] | None:
        """Wait for work, let a batch fill (bounded by the delay), and pop it; None when closed and empty."""
        with self._cond:
            while not self._heap or self._busy:  # one run on the model at a time, inline or batched
                if self._closing and not self._heap:
                    return None
                self._cond.wait()
            deadline = self._heap[0].enqueued + self._delay_s
            # Wait for as many rows as the last batch had, not for a full batch: steady callers come
            # back together, and waiting for company that is not coming (4 callers, batches of up to
            # 64) would add the whole delay to every request. A lone caller runs at once; when more
            # callers come, batches grow with what is queued when one is taken.
            self._fill_rows = min(self.max_batch_size, max(1, self._last_batch_rows))
            while not self._closing and self._queued_rows < self._fill_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._fill_rows = self.max_batch_size
            batch: list[_Item] = []
            rows = 0
            skipped: list[_Item] = []
            trailing = self._heap[0].trailing
            while self._heap and rows < self.max_batch_size:
                item = heapq.heappop(self._heap)
                if item.trailing != trailing or (batch and rows + item.rows > self.max_batch_size):
                    skipped.append(item)  # another shape, or too big to join: next batch
                    continue
                batch.append(item)
                rows += item.rows
            for item in skipped:
                heapq.heappush(self._heap, item)
            self._queued_rows -= rows
            self._busy = True
            return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            live = [item for item in batch if item.future.claim()]
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
            outputs = self._run_batch(stacked([item.x for item in live]))
        except Exception as exc:  # noqa: BLE001  # a failing run fails its own requests, not the batcher thread
            outputs = None
            for item in live:
                item.future.set_exception(exc)
        self._finished(sum(item.rows for item in live), started)
        if outputs is not None:
            offset = 0
            for item in live:
                item.future.set_result(sliced(outputs, offset, offset + item.rows))
                offset += item.rows

    def _finished(self, rows: int, started: float) -> None:
        """Free the model after a run of ``rows`` rows that began at ``started`` (perf_counter)."""
        elapsed_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self._busy = False
            self._last_batch_rows = rows
            self._service_ms_per_row = 0.8 * self._service_ms_per_row + 0.2 * (elapsed_ms / max(rows, 1))
            self.batches_run += 1
            if self._heap:  # waking an idle worker for nothing costs a GIL hand-off per request
                self._cond.notify()
