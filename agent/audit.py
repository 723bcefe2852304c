"""Audit sampling: a small random share of confident local answers, asked of the cloud too, in the background.

Offloaded samples are only the hard cases: a model fine-tuned on them alone learns
a biased picture (measured: offload at iso-accuracy fell only to 0.75x in ten
rounds). So a random ``audit_rate`` of the answers the edge gave alone is sent to
the cloud after the caller has its answer, at the lowest priority, and kept in the
sample store with the cloud's probabilities. How often the cloud agrees with those
local answers is a live, unbiased estimate of the edge's accuracy on what it
answers alone (heartbeat ``audit``, ``/metrics``).

Never on the request's path: ``offer`` is a random draw and a non-blocking put on
a bounded queue (full means the audit is skipped); one thread sends, waits and
stores, one audit at a time.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass

import numpy as np

from agent.metrics import AgentMetrics, RollingWindow
from agent.protocol import PRIORITY_MIN, ErrorReply, InferRequest, ProtocolError
from agent.samples import SampleStore
from agent.uplink import ConnectionLost, OffloadUnavailable, Uplink

log = logging.getLogger(__name__)
QUEUE_SIZE = 64
DEADLINE_MS = 5000  # an audit waits for nobody: a slow cloud may take its time, within reason
AGREEMENT_WINDOW = 512


@dataclass(frozen=True)
class _Audit:
    task: str
    request_id: str
    x: np.ndarray
    predicted: np.ndarray  # the local answer's top class per row


class Auditor:
    """Asks the cloud about a random share of confident local answers and keeps what it says."""

    def __init__(self, uplink: Uplink, samples: SampleStore | None, metrics: AgentMetrics,
                 rng: random.Random | None = None) -> None:
        self.uplink, self.samples, self.metrics = uplink, samples, metrics
        self._draw = (rng or random.Random()).random
        self._queue: queue.Queue[_Audit | None] = queue.Queue(QUEUE_SIZE)
        self._agreement: dict[str, RollingWindow] = {}
        self._audited: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fedge-audit", daemon=True)
        self._thread.start()

    def offer(self, task: str, request_id: str, x: np.ndarray, probs: np.ndarray, rate: float) -> None:
        """With probability ``rate``, queue this answered request for an audit (never blocks)."""
        if rate <= 0 or self._draw() >= rate:
            return
        try:
            self._queue.put_nowait(_Audit(task, request_id, x, probs.argmax(axis=-1)))
        except queue.Full:
            self.metrics.audits.labels(task, "skipped").inc()

    def stop(self) -> None:
        """Finish the audit under way (bounded by its deadline) and drop the queued ones."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(DEADLINE_MS / 1000 + 1)

    def heartbeat(self) -> dict[str, dict[str, float | int | None]]:
        """``{task: {"audited": n, "agreement": share of the last audits where the cloud agreed}}``."""
        with self._lock:
            return {task: {"audited": self._audited[task], "agreement": window.mean()}
                    for task, window in self._agreement.items()}

    def _loop(self) -> None:
        while (audit := self._queue.get()) is not None:
            outcome = self._run(audit)
            self.metrics.audits.labels(audit.task, outcome).inc()

    def _run(self, audit: _Audit) -> str:
        """Send one audit and keep the cloud's answer; returns the outcome counted in metrics."""
        request = InferRequest(audit.task, {"input": audit.x}, audit.request_id, PRIORITY_MIN, DEADLINE_MS)
        try:
            correlation, latch = self.uplink.submit(request)
        except OffloadUnavailable:
            return "not_sent"
        try:
            answer = latch.result(timeout=DEADLINE_MS / 1000)
        except TimeoutError:
            self.uplink.forget(correlation)
            return "late"
        except (ConnectionLost, ProtocolError):
            return "failed"
        if isinstance(answer, ErrorReply):
            return "refused"
        cloud = next(iter(answer.outputs.values()), None)
        if cloud is None or cloud.ndim != 2 or len(cloud) != len(audit.x) or not np.isfinite(cloud).all():
            return "bad_reply"
        if self.samples is not None:
            self.samples.add(audit.request_id, audit.task, audit.x, cloud, origin="audit")
        agreed = cloud.argmax(axis=1) == audit.predicted
        with self._lock:
            window = self._agreement.setdefault(audit.task, RollingWindow(AGREEMENT_WINDOW))
            for row in agreed:
                window.add(float(row))
            self._audited[audit.task] = self._audited.get(audit.task, 0) + len(agreed)
        self.metrics.audit_agreement.labels(audit.task).set(window.mean() or 0.0)
        log.debug("audited %s: the cloud agreed on %d of %d rows", audit.request_id, int(agreed.sum()), len(agreed))
        return "kept"
