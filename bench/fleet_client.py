"""Simulated agents for the cloud benchmarks: the agent's own MQTT client, many to a process, no local model.

Each simulated agent is an ``agent.uplink.Uplink`` (its own client id,
reply topic ``{prefix}/device/{id}/reply``, Last Will and retained ``online``
status, Correlation Data to match replies), so the load is what real agents
put on the broker and the workers. A few processes hold them, so the load
generator is not one Python interpreter's GIL.

Two ways to load the cloud:
* paced: every agent sends ``rate`` requests a second (evenly spaced across a
  process's agents), as a fleet does (``bench.fleet``);
* closed loop: every agent keeps ``inflight`` requests out and sends the next
  as each answer arrives, as much as the cloud can take (``bench.workers``).

Every request is accounted: an answer (``ok``), an error reply by code, a
connection failure, or ``lost`` when nothing came within its deadline plus a
grace period. A reply nobody waits for (a duplicate) is counted too.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.latch import Latch
from agent.mqtt_client import BrokerSettings
from agent.protocol import ErrorReply, InferReply, InferRequest, ProtocolError, Topics
from agent.uplink import ConnectionLost, OffloadUnavailable, Uplink

GRACE_S = 2.0  # after a request's deadline, how long before an unanswered request counts as lost
NOT_SENT, CONNECTION_LOST = "not_sent", "connection_lost"  # outcomes without an answer from the cloud


@dataclass(frozen=True)
class Load:
    """What every simulated agent does; plain values so it crosses a process boundary."""

    host: str
    port: int
    seconds: float  # measured window
    warmup_s: float = 0.5  # sent and answered, but not measured
    rate: float | None = None  # requests per second per agent (paced); None: closed loop
    inflight: int = 1  # closed loop: requests each agent keeps out
    deadline_ms: int = 5000
    task: str = "mnist1d"
    prefix: str = "fedge/v1"
    features: int = 40


@dataclass
class Tally:
    """What happened to every request sent in the measured window (and the duplicates seen at all).

    ``errors`` counts error replies by their protocol code, and the two client-side outcomes
    ``not_sent`` and ``connection_lost``.
    """

    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    mismatched: int = 0  # answered with another request's id
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    window_s: float = 0.0
    answered_all: int = 0  # every answer, warm-up and drain included (for CPU per request)
    cpu_s: float = 0.0  # the load generator's own CPU from start to drain

    @property
    def answered_per_s(self) -> float:
        replies = self.ok + sum(n for code, n in self.errors.items() if code not in (NOT_SENT, CONNECTION_LOST))
        return replies / self.window_s if self.window_s else 0.0

    def merge(self, other: Tally) -> Tally:
        return Tally(self.sent + other.sent, self.ok + other.ok, self.errors + other.errors, self.lost + other.lost,
                     self.mismatched + other.mismatched, self.duplicates + other.duplicates,
                     self.latencies_ms + other.latencies_ms, max(self.window_s, other.window_s),
                     self.answered_all + other.answered_all, self.cpu_s + other.cpu_s)


class _Recorder:
    """Counts what happens to measured requests, from every agent's network thread, until closed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tally = Tally()
        self.measuring = False  # closed loop: whether a request sent now is measured
        self._closed = False

    def sent(self) -> None:
        with self.lock:
            self.tally.sent += 1

    def answered(self) -> None:
        with self.lock:
            self.tally.answered_all += 1

    def outcome(self, outcome: str, elapsed_ms: float) -> None:
        with self.lock:
            if self._closed:
                return
            if outcome == "ok":
                self.tally.ok += 1
                self.tally.latencies_ms.append(elapsed_ms)
            elif outcome == "mismatched":
                self.tally.mismatched += 1
            else:
                self.tally.errors[outcome] += 1

    def close(self) -> None:
        """Stop counting; every measured request not accounted by now is lost."""
        with self.lock:
            self._closed = True
            t = self.tally
            t.lost = t.sent - t.ok - t.mismatched - sum(t.errors.values())


class _Agent:
    """One simulated agent: an Uplink and one input row to send."""

    def __init__(self, device_id: str, load: Load, recorder: _Recorder) -> None:
        self.client = Uplink(device_id, Topics(load.prefix), BrokerSettings(load.host, load.port),
                                    max_inflight=max(load.inflight, 1024), client_id=f"bench-{device_id}")
        self.load = load
        self.recorder = recorder
        rng = np.random.default_rng(zlib.crc32(device_id.encode()))
        self._x = rng.standard_normal((1, load.features)).astype(np.float32)
        self.next_on_answer = False  # closed loop: send another request from each answer

    def send(self, measured: bool) -> None:
        request = InferRequest(self.load.task, {"input": self._x}, timeout_ms=self.load.deadline_ms)
        if measured:
            self.recorder.sent()
        started = time.perf_counter()
        try:
            _, future = self.client.submit(request)
        except OffloadUnavailable:
            if measured:
                self.recorder.outcome(NOT_SENT, 0.0)
            return
        future.add_done_callback(lambda f: self._done(f, request.request_id, started, measured))

    def _done(self, latch: Latch[InferReply | ErrorReply], request_id: str, started: float, measured: bool) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.recorder.answered()
        if measured:
            try:
                reply = latch.result(timeout=0)
            except ConnectionLost:
                outcome = CONNECTION_LOST
            except ProtocolError as exc:  # a reply that could not be decoded
                outcome = exc.code.value
            else:
                outcome = "ok" if isinstance(reply, InferReply) else reply.code.value
                outcome = outcome if reply.request_id == request_id else "mismatched"
            self.recorder.outcome(outcome, elapsed_ms)
        if self.next_on_answer:
            self.send(measured=self.recorder.measuring)


def _run(ids: list[str], load: Load, phase: float, ready: Any, go: Any, results: Any) -> None:
    """Process body: connect every agent, wait for ``go``, load the cloud, drain, report a Tally."""
    recorder = _Recorder()
    agents = [_Agent(i, load, recorder) for i in ids]
    for agent in agents:
        agent.client.start()
    ready.put(all(agent.client.wait_connected(30) for agent in agents))
    go.wait()
    cpu_at_go = time.process_time()
    started = time.monotonic()
    measure_from, measure_to = started + load.warmup_s, started + load.warmup_s + load.seconds
    pause = threading.Event()  # never set: an interruptible, precise wait
    if load.rate is None:
        for agent in agents:
            agent.next_on_answer = True
            for _ in range(load.inflight):
                agent.send(measured=False)
        pause.wait(max(0.0, measure_from - time.monotonic()))
        recorder.measuring = True
        pause.wait(max(0.0, measure_to - time.monotonic()))
        recorder.measuring = False
        for agent in agents:
            agent.next_on_answer = False
    else:
        interval = 1.0 / (load.rate * len(agents))
        k = 0
        while (due := started + (k + phase) * interval) < measure_to:
            pause.wait(max(0.0, due - time.monotonic()))
            agents[k % len(agents)].send(measured=due >= measure_from)
            k += 1
    until = time.monotonic() + load.deadline_ms / 1000 + GRACE_S
    while any(agent.client.inflight for agent in agents) and time.monotonic() < until:
        pause.wait(0.01)
    recorder.close()
    recorder.tally.window_s = load.seconds
    recorder.tally.duplicates = sum(agent.client.ignored_replies for agent in agents)
    for agent in agents:
        agent.client.stop()
    recorder.tally.cpu_s = time.process_time() - cpu_at_go
    results.put(recorder.tally)


def _get(results: Any, processes: list[Any], timeout: float) -> Any:
    """The next item a simulated-agent process reports; fails fast if one died without reporting."""
    waited = 0.0
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            waited += 0.5
            dead = [p.name for p in processes if p.exitcode not in (None, 0)]
            if dead or waited >= timeout:
                raise RuntimeError(f"simulated-agent process {', '.join(dead) or '(all)'} did not report"
                                   f" ({'it exited with an error; see its output above' if dead else f'{timeout:.0f} s'})"
                                   ) from None


def run_fleet(load: Load, agents: int, processes: int, *, id_prefix: str = "sim") -> Tally:
    """Run ``agents`` simulated agents spread over ``processes`` processes; return the merged Tally."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    go = context.Event()
    processes = max(1, min(processes, agents))
    groups = [[f"{id_prefix}-{i:04d}" for i in range(p, agents, processes)] for p in range(processes)]
    workers = [context.Process(target=_run, args=(ids, load, p / processes, ready, go, results), daemon=True,
                               name=f"{id_prefix}-agents-{p}") for p, ids in enumerate(groups)]
    for w in workers:
        w.start()
    try:
        if not all(_get(ready, workers, 120) for _ in workers):
            raise RuntimeError("some simulated agents could not connect to the broker")
        go.set()
        total = Tally()
        for _ in workers:
            total = total.merge(_get(results, workers, load.warmup_s + load.seconds + load.deadline_ms / 1000 + 120))
        return total
    finally:
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.terminate()
