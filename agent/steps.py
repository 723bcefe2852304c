"""A request's answer as steps: what it waits for, and the two ways to wait.

The cascade (agent/cascade.py) is a generator that yields what it waits for, a
run on the local model (``LocalRun``) or the cloud's answer (``CloudWait``), and
is sent the result (or has the failure thrown in). ``finish`` drives one on the
caller's thread: the blocking call MQTT requests and the CLI make. ``run_group``
drives many on one thread: their rows are queued for the model back to back
(the batcher's worker wakes once and batches them), and those left waiting for
the cloud are handed back instead of holding a thread. That is how the HTTP API
(agent/http_api.py) pays one thread hand-off per group of requests, not one per
request.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from agent.batching import MicroBatcher, Pending
from agent.feeds import Rows
from agent.latch import Latch
from agent.protocol import ErrorReply, InferReply


class LocalRun(NamedTuple):
    """Run ``x`` on the local model by ``deadline`` (monotonic): sent a ``Ran``, or thrown what failed."""

    batcher: MicroBatcher
    x: Rows
    priority: int
    deadline: float


class CloudWait(NamedTuple):
    """The cloud's answer to an offload by ``deadline`` (monotonic); thrown TimeoutError when it is late."""

    answer: Latch[InferReply | ErrorReply]
    deadline: float


Step = LocalRun | CloudWait
Steps = Generator[Step, object, InferReply]
#: How a run of steps ended: its reply, or the exception it raised (ProtocolError for an unservable request).
Outcome = InferReply | Exception
K = TypeVar("K")


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def advance(steps: Steps, value: object = None, error: BaseException | None = None) -> Step | Outcome:
    """Resume ``steps`` with the result of what it waited for (or ``error``): its next step, or how it ended."""
    try:
        return steps.throw(error) if error is not None else steps.send(value)
    except StopIteration as done:
        return done.value  # the generator's return value: its reply
    except Exception as exc:  # noqa: BLE001  # the caller answers with it (ProtocolError) or reports it
        return exc


def _wait(step: Step) -> tuple[object, BaseException | None]:
    """What ``step`` waits for, on this thread (a local run runs here if the model is idle), or its failure."""
    try:
        if isinstance(step, LocalRun):
            return step.batcher.call(step.x, step.priority, _left(step.deadline)), None
        return step.answer.result(timeout=_left(step.deadline)), None
    except Exception as exc:  # noqa: BLE001  # thrown into the steps, which decide what it means
        return None, exc


def finish(steps: Steps) -> InferReply:
    """Drive ``steps`` to the end on this thread, waiting for each step in turn; raises what it raises.

    Every in-process answer passes here (``Agent.infer``): kept to a loop of sends.
    """
    try:
        step = next(steps)
        while True:
            value, error = _wait(step)
            step = steps.send(value) if error is None else steps.throw(error)
    except StopIteration as done:
        return done.value


@dataclass
class Entry(Generic[K]):
    """One request in a group: its caller's key, its steps and what to resume them with."""

    key: K
    steps: Steps
    value: object = None
    error: BaseException | None = None


@dataclass
class Grouped(Generic[K]):
    """What ``run_group`` leaves: requests answered (or failed), and those waiting for the cloud."""

    done: list[tuple[K, Outcome]]
    waiting: list[tuple[Entry[K], CloudWait]]


def run_group(entries: list[Entry[K]]) -> Grouped[K]:
    """Advance every entry until it ends or waits for the cloud.

    Each local run is queued for the model as its request reaches it, so the next request's capacity
    check sees it waiting, as it would a caller on another thread; the batcher's worker wakes once for
    the lot and runs them in batches, and they are waited for in turn. A group of one runs as ``finish``
    would (on this thread if the model is idle).
    """
    grouped: Grouped[K] = Grouped([], [])
    queued: deque[tuple[Entry[K], LocalRun, float, Pending]] = deque()
    lone = len(entries) == 1

    def settle(entry: Entry[K]) -> None:
        while True:
            step = advance(entry.steps, entry.value, entry.error)
            entry.value, entry.error = None, None
            if isinstance(step, CloudWait):
                grouped.waiting.append((entry, step))
                return
            if not isinstance(step, LocalRun):
                grouped.done.append((entry.key, step))
                return
            if lone:
                entry.value, entry.error = _wait(step)
                continue
            try:
                queued.append((entry, step, time.perf_counter(), step.batcher.submit(step.x, step.priority)))
                return
            except Exception as exc:  # noqa: BLE001  # QueueFull, BatcherClosed: thrown into its steps
                entry.error = exc

    for entry in entries:
        settle(entry)
    while queued:
        entry, step, queued_at, pending = queued.popleft()
        try:
            entry.value = step.batcher.wait(pending, queued_at, _left(step.deadline))
        except Exception as exc:  # noqa: BLE001  # TimeoutError, or the run's own failure
            entry.error = exc
        settle(entry)
    return grouped
