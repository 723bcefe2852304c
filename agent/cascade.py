"""The local-or-cloud decision for one request, and the one answer it ends in.

A request is checked, queued for the local model (or sent straight to the
cloud when the local queue is past capacity), and its calibrated confidence
decides whether the cloud is asked. Whatever goes wrong on the way to the
cloud (no broker, a silent or broken cloud, the deadline) ends in the local
answer marked ``degraded``, counted by cause; nothing waits past the deadline.
The cloud's answers are kept in the sample store as training labels, and a
random share of confident answers is audited by the cloud (agent/audit.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from agent.audit import Auditor
from agent.batching import BatcherClosed, QueueFull, Ran
from agent.confidence import confidence, fuse, top_labels
from agent.feeds import SCORES, Rows, named
from agent.metrics import AgentMetrics
from agent.policy import (
    CapacityLimits,
    ConfidencePolicy,
    Pressure,
    Reason,
    confidence_policy,
    may_offload,
    over_capacity,
)
from agent.profile.offload import GeometricMeanFusion, Metric, OffloadPolicy, PolicyBase
from agent.protocol import PRIORITY_MIN, ErrorCode, ErrorReply, InferReply, InferRequest, ProtocolError, Source
from agent.runtime import LocalModel
from agent.samples import SampleStore
from agent.steps import CloudWait, LocalRun, Step, Steps
from agent.uplink import ConnectionLost, OffloadUnavailable, Uplink

log = logging.getLogger(__name__)
#: A task without an offload policy still needs a deadline and a queue bound: the profile's defaults.
DEFAULT_DEADLINE_MS = float(PolicyBase.model_fields["default_deadline_ms"].default)
DEFAULT_QUEUE_DEPTH = int(PolicyBase.model_fields["max_queue_depth"].default)


@dataclass
class Route:
    """How one task is served: its local model and, when it may offload, its policy and limits."""

    model: LocalModel
    policy: ConfidencePolicy | None
    limits: CapacityLimits | None
    metric: Metric
    fusion_weight: float | None
    deadline_ms: float
    audit_rate: float = 0.0

    @classmethod
    def of(cls, model: LocalModel, policy: OffloadPolicy | None) -> Route:
        if policy is None:
            return cls(model, None, None, "max_prob", None, DEFAULT_DEADLINE_MS)
        fusion = policy.fusion.weight if isinstance(policy.fusion, GeometricMeanFusion) else None
        limits = CapacityLimits(policy.max_queue_depth, policy.max_inflight, policy.local_latency_slo_ms)
        return cls(model, confidence_policy(policy), limits, policy.metric, fusion, policy.default_deadline_ms,
                   policy.audit_rate)


class Cascade:
    """Answers requests on the local model first and the cloud when unsure or busy; always once, in time."""

    def __init__(self, metrics: AgentMetrics, uplink: Uplink | None, samples: SampleStore | None,
                 stopping: threading.Event, auditor: Auditor | None = None) -> None:
        self.metrics = metrics
        self.uplink = uplink
        self.samples = samples
        self.auditor = auditor
        self._stopping = stopping

    def steps(self, route: Route, request: InferRequest, started: float) -> Steps:
        """The request's one answer, as steps (agent/steps.py); raises ProtocolError for requests that cannot be served."""
        x = route.model.check_inputs(request.inputs)
        deadline = started + (request.timeout_ms if request.timeout_ms is not None else route.deadline_ms) / 1000
        if route.policy is None or route.limits is None:  # local only: no load picture needed
            outputs, timings = yield from self._run_local(route, request, x, deadline)
            finite = all(np.isfinite(out).all() for out in outputs if out.dtype.kind == "f")
            return self._local_reply(route, request, outputs, timings, finite)
        pressure = self._pressure(route)
        if over_capacity(route.limits, pressure) and may_offload(route.limits, pressure, request.priority) is None:
            reply = yield from self._ask_cloud(route, request, x, None, deadline, Reason.CAPACITY, {})
            if isinstance(reply, InferReply):
                return reply
        outputs, timings = yield from self._run_local(route, request, x, deadline)
        probs = outputs[0]
        conf = float(confidence(probs, route.metric).min())
        finite = math.isfinite(conf)  # NaN in the probabilities (a model overflowing) makes every metric NaN
        if finite and not route.policy.wants_offload(conf):
            self.metrics.offload_window.add(0.0)
            reply = self._local_reply(route, request, outputs, timings, finite)
            if self.auditor is not None and len(x) == 1 and may_offload(route.limits, pressure, PRIORITY_MIN) is None:
                self.auditor.offer(route.model.task, request.request_id, x[0], probs, route.audit_rate)
            return reply
        blocked = may_offload(route.limits, self._pressure(route), request.priority)
        if blocked is not None:
            self.metrics.offload_window.add(0.0)
            return self._local_reply(route, request, outputs, timings, finite, degraded=blocked)
        reply = yield from self._ask_cloud(route, request, x, probs if finite else None, deadline, Reason.UNCONFIDENT,
                                           timings)
        if isinstance(reply, InferReply):
            return reply
        return self._local_reply(route, request, outputs, timings, finite, degraded=reply)

    def _run_local(self, route: Route, request: InferRequest, x: Rows, deadline: float
                   ) -> Generator[Step, object, tuple[Rows, dict[str, float]]]:
        model = route.model
        try:
            ran = yield LocalRun(model.batcher, x, request.priority, deadline)
            assert isinstance(ran, Ran)
        except QueueFull as exc:
            raise ProtocolError(ErrorCode.OVERLOADED, f"{exc}; retry later or with a higher priority") from None
        except BatcherClosed as exc:
            if route.model is not model and not self._stopping.is_set():  # a new version took over: run it there
                return (yield from self._run_local(route, request, x, deadline))
            raise ProtocolError(ErrorCode.OVERLOADED, str(exc)) from None
        except TimeoutError:
            raise ProtocolError(ErrorCode.EXPIRED, "the deadline passed before the local model could answer") from None
        timings = {"queue": ran.queue_s * 1000, "local": ran.run_s * 1000}
        return ran.outputs, timings

    def _ask_cloud(self, route: Route, request: InferRequest, x: Rows, local_probs: np.ndarray | None,
                   deadline: float, reason: Reason, timings: dict[str, float]
                   ) -> Generator[Step, object, InferReply | Reason]:
        """The cloud's (or fused) answer, or why it cannot be had in time (the caller answers locally).

        The cloud's class scores are checked against the local model's; its other outputs (a model with
        several) are passed on as it sent them.
        """
        assert self.uplink is not None
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            return Reason.CLOUD_LATE
        task = route.model.task
        cloud_request = InferRequest(task, named(x, route.model.inputs), request.request_id, request.priority,
                                     remaining_ms)
        sent = time.monotonic()
        self.metrics.offloads.labels(task, reason.value).inc()
        self.metrics.offload_window.add(1.0)
        try:
            correlation, future = self.uplink.submit(cloud_request)
        except OffloadUnavailable as exc:
            log.debug("offload of %s not sent: %s", request.request_id, exc)
            return Reason.BROKER_DOWN if not self.uplink.connected else Reason.INFLIGHT_FULL
        try:
            answer = yield CloudWait(future, deadline)
            assert isinstance(answer, (InferReply, ErrorReply))
        except TimeoutError:
            self.uplink.forget(correlation)
            log.info("cloud did not answer %s within its deadline; answering locally", request.request_id)
            return Reason.CLOUD_LATE
        except ConnectionLost as exc:
            log.info("offload of %s failed (%s); answering locally", request.request_id, exc)
            return Reason.BROKER_DOWN
        except ProtocolError as exc:
            log.info("the cloud's reply to %s is unreadable (%s); answering locally", request.request_id, exc)
            return Reason.BAD_REPLY
        if isinstance(answer, ErrorReply):
            log.info("cloud refused %s: %s %s", request.request_id, answer.code.value, answer.message)
            return Reason.CLOUD_ERROR
        cloud_probs = answer.outputs.get(SCORES, next(iter(answer.outputs.values()), None))
        rows = len(x[0])
        classes = route.model.outputs[0].shape[-1:]  # [] for a scalar output, [None] where the graph leaves it open
        expected = (rows, classes[0]) if classes and classes[0] else None
        if cloud_probs is None or cloud_probs.ndim != 2 or len(cloud_probs) != rows or \
                (expected is not None and cloud_probs.shape != expected) or not np.isfinite(cloud_probs).all():
            log.warning("ignored a cloud answer of shape %s for %s (expected %s)",
                        None if cloud_probs is None else cloud_probs.shape, request.request_id, expected)
            return Reason.BAD_REPLY
        round_trip_ms = (time.monotonic() - sent) * 1000
        cloud_ms = answer.timings_ms.get("cloud", 0.0) + answer.timings_ms.get("queue", 0.0)
        if self.samples is not None and len(x) == 1:  # training (agent/federated) takes single-input models
            self.samples.add(request.request_id, task, x[0], cloud_probs)
        source, probs = Source.CLOUD, cloud_probs.astype(np.float32)
        if route.fusion_weight is not None and local_probs is not None:
            source, probs = Source.FUSED, fuse(local_probs, probs, route.fusion_weight)
        self.metrics.offload_ms.add(round_trip_ms)
        others = {name: out for name, out in answer.outputs.items() if out is not cloud_probs}
        return InferReply({SCORES: probs, **others}, answer.model_name, answer.model_version, request.request_id,
                          source, False,
                          {**timings, "network": max(0.0, round_trip_ms - cloud_ms), "cloud": cloud_ms},
                          top_labels(probs, route.model.labels))

    def _local_reply(self, route: Route, request: InferRequest, outputs: Rows, timings: dict[str, float],
                     finite: bool, degraded: Reason | None = None) -> InferReply:
        """The local answer (``degraded``: why the cloud's was not had), or an error when ``outputs`` are not ``finite``.

        NaN is no answer (nor valid JSON). Callers say whether they are finite: a confidence computed from
        them already tells, at no extra cost.
        """
        model = route.model
        if not finite:
            raise ProtocolError(ErrorCode.INTERNAL, f"the local model {model.name} v{model.version} gave a"
                                                    " non-finite output for this input (far outside what it was"
                                                    " trained on?) and no cloud answer replaced it")
        self.metrics.local_ms.add(timings.get("local", 0.0))
        if degraded is not None:
            self.metrics.degraded.labels(model.task, degraded.value).inc()
        labels = top_labels(outputs[0], model.labels) if model.output_kind != "other" else ()
        return InferReply(named(outputs, model.answers), model.name, model.version, request.request_id, Source.EDGE,
                          degraded is not None, timings, labels)

    def _pressure(self, route: Route) -> Pressure:
        depth, wait_ms = route.model.batcher.load()
        uplink = self.uplink
        if uplink is None:
            return Pressure(depth, wait_ms, 0, False, False)
        status = uplink.cloud_status
        return Pressure(depth, wait_ms, uplink.inflight, uplink.connected, status is not None and not status.overloaded)
