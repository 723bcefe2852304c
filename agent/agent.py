"""The edge agent: local inference first, the cloud when unsure or busy, always one answer in time.

``Agent`` is what ``fedge-agent run`` starts and what tests and benchmarks run
in-process. A request is checked, queued for the local model (or sent straight
to the cloud when the local queue is past capacity), and its calibrated
confidence decides whether the cloud is asked. Whatever goes wrong on the way
to the cloud (no broker, a silent or broken cloud, the deadline) ends in the
local answer marked ``degraded``; nothing waits past the deadline.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.batching import BatcherClosed, QueueFull
from agent.confidence import confidence, fuse
from agent.feedback import FeedbackTally
from agent.http_api import ApiServer
from agent.metrics import AgentMetrics, rss_mb
from agent.model_store import ModelStore
from agent.mqtt_client import TlsFiles
from agent.offload import BrokerSettings, ConnectionLost, OffloadClient, OffloadUnavailable
from agent.policy import (
    CapacityLimits,
    ConfidencePolicy,
    Pressure,
    Reason,
    confidence_policy,
    may_offload,
    over_capacity,
)
from agent.profile.offload import GeometricMeanFusion, Metric
from agent.profile.resolve import resolve_password
from agent.profile.schema import Profile
from agent.protocol import (
    DEFAULT_LIMITS,
    ErrorCode,
    ErrorReply,
    InferReply,
    InferRequest,
    Limits,
    ProtocolError,
    Source,
    Topics,
    dtypes,
)
from agent.runtime import LocalModel
from agent.samples import SampleStore

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; JetPack 6 boards run 3.10

    from agent.updates import Updater

log = logging.getLogger(__name__)
DEFAULT_DEADLINE_MS = 1000.0
OUTPUT = "probabilities"
MAX_LABEL = 2**31  # a class index the sample store (SQLite INTEGER) and the cloud's counts can hold


@dataclass
class _Task:
    model: LocalModel
    policy: ConfidencePolicy | None
    limits: CapacityLimits | None
    metric: Metric
    fusion_weight: float | None
    deadline_ms: float


class Agent:
    """One device's agent, built from its profile."""

    def __init__(self, profile: Profile, *, store_root: Path | None = None, broker: BrokerSettings | None = None,
                 api_port: int | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.profile = profile
        self.limits = limits
        self.device_id = profile.device.id
        self.topics = Topics(profile.broker.topic_prefix)
        state_dir = profile.resolve_path(profile.storage.directory)
        self.store = ModelStore(store_root or state_dir / "models")
        self.metrics = AgentMetrics()
        self._broker = broker or self.broker_settings(profile)
        self._api_port = profile.api.port if api_port is None else api_port
        self._tasks: dict[str, _Task] = {}
        self.samples: SampleStore | None = None
        self.offload: OffloadClient | None = None
        self.api: ApiServer | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.updater: Updater | None = None  # set in start() when the profile follows releases
        self._ready = False
        self._state_dir = state_dir
        self._started_at = time.monotonic()
        self.answers = FeedbackTally()  # recent answers, so feedback can be judged per model version

    @staticmethod
    def broker_settings(profile: Profile) -> BrokerSettings:
        """Broker settings from the profile, with the password resolved from its reference."""
        b = profile.broker
        # a tls section means TLS, with the system's CAs unless one is named
        tls = None if b.tls is None else TlsFiles.from_config(b.tls, profile.resolve_path)
        return BrokerSettings(b.host, b.port, tls, b.username, resolve_password(profile), b.keepalive_s)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Load and verify every model and the release key, then connect, serve HTTP and send heartbeats.

        If any step fails, what the earlier steps started is stopped again before the error is raised.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        p = self.profile
        for task, spec in p.models.items():
            policy = p.offload.get(task)
            depth = policy.max_queue_depth if policy else 64
            model = LocalModel.load(task, spec, p, self.store, max_queue_depth=depth)
            self._tasks[task] = _Task(
                model=model,
                policy=confidence_policy(policy) if policy else None,
                limits=CapacityLimits(policy.max_queue_depth, policy.max_inflight, policy.local_latency_slo_ms)
                if policy else None,
                metric=policy.metric if policy else "max_prob",
                fusion_weight=policy.fusion.weight if policy and isinstance(policy.fusion, GeometricMeanFusion) else None,
                deadline_ms=policy.default_deadline_ms if policy else DEFAULT_DEADLINE_MS,
            )
        if p.updates.enabled:  # the release key is checked before anything connects
            from agent.updates import Updater  # signature checks load cryptography: only where updates are on

            self.updater = Updater(self, self._state_dir)
        samples = p.storage.samples
        self.samples = SampleStore(self._state_dir / "samples.db", enabled=samples.enabled, max_rows=samples.max_rows,
                                   max_bytes=samples.max_bytes, retention_days=samples.retention_days)
        if p.offload or p.updates.enabled:  # releases arrive on the same connection
            inflight = max((policy.max_inflight for policy in p.offload.values()), default=1)
            self.offload = OffloadClient(self.device_id, self.topics, self._broker, max_inflight=inflight,
                                         client_id=p.mqtt_client_id)
            self.offload.start()
        if self.updater is not None and self.offload is not None:
            self.updater.start(self.offload)
        if p.api.enabled:
            self.api = ApiServer(self, p.api.host, self._api_port)
            self.api.start()
        if p.metrics.enabled and self.offload is not None:
            self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="fedge-heartbeat", daemon=True)
            self._heartbeat.start()
        self._ready = True
        log.info("agent %s ready: tasks %s", self.device_id, ", ".join(self._tasks))

    def stop(self) -> None:
        """Stop taking requests, answer what is queued, publish offline, close the store."""
        self._ready = False
        self._stop.set()
        if self.api is not None:
            self.api.stop()
        if self.updater is not None:
            self.updater.stop()
        for task in self._tasks.values():
            task.model.batcher.close(drain=True)
        if self.offload is not None:
            self.offload.stop()
        if self._heartbeat is not None:
            self._heartbeat.join(5)
        if self.samples is not None:
            self.samples.close()

    # -- model updates (agent/updates) ----------------------------------------------------
    def local_model(self, task: str) -> LocalModel:
        """The model serving ``task`` right now."""
        return self._tasks[task].model

    def replace_model(self, task: str, model: LocalModel) -> LocalModel:
        """Serve ``task`` with ``model`` from now on; the old model answers what it has queued, then closes."""
        entry = self._tasks[task]
        old, entry.model = entry.model, model
        old.batcher.close(drain=True)
        return old

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving ---------------------------------------------------------------------------
    def ready(self) -> bool:
        return self._ready

    def infer(self, request: InferRequest) -> InferReply:
        """Answer one request (raises ProtocolError for requests that cannot be served)."""
        started = time.monotonic()
        task = self._tasks.get(request.task)
        if task is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TASK, f"no model for task {request.task!r}; "
                                                       f"this agent serves {', '.join(sorted(self._tasks))}")
        try:
            reply = self._serve(task, request, started)
        except ProtocolError as exc:
            self.metrics.errors.labels(request.task, exc.code.value).inc()
            raise
        self._count(request.task, reply, started)
        self.answers.answered(request.task, reply)
        return reply

    def _serve(self, task: _Task, request: InferRequest, started: float) -> InferReply:
        x = task.model.check_input(request.tensor)
        deadline = started + (request.timeout_ms if request.timeout_ms is not None else task.deadline_ms) / 1000
        if task.policy is None or task.limits is None:  # local only: no load picture needed
            probs, timings = self._run_local(task, request, x, deadline)
            finite = bool(np.isfinite(probs).all())
            return self._local_reply(task, request, probs, timings, degraded=False, finite=finite)
        pressure = self._pressure(task)
        if over_capacity(task.limits, pressure) and may_offload(task.limits, pressure, request.priority) is None:
            reply = self._ask_cloud(task, request, x, None, deadline, Reason.CAPACITY, {})
            if reply is not None:
                return reply
        probs, timings = self._run_local(task, request, x, deadline)
        conf = float(confidence(probs, task.metric).min())
        finite = math.isfinite(conf)  # NaN in the probabilities (a model overflowing) makes every metric NaN
        if finite and not task.policy.wants_offload(conf):
            self.metrics.offload_window.add(0.0)
            return self._local_reply(task, request, probs, timings, degraded=False, finite=True)
        blocked = may_offload(task.limits, self._pressure(task), request.priority)
        if blocked is not None:
            self.metrics.offload_window.add(0.0)
            return self._local_reply(task, request, probs, timings, degraded=True, finite=finite)
        reply = self._ask_cloud(task, request, x, probs if finite else None, deadline, Reason.UNCONFIDENT, timings)
        if reply is not None:
            return reply
        return self._local_reply(task, request, probs, timings, degraded=True, finite=finite)

    def _run_local(self, task: _Task, request: InferRequest, x: np.ndarray, deadline: float
                   ) -> tuple[np.ndarray, dict[str, float]]:
        model = task.model
        try:
            ran = model.batcher.call(x, request.priority, max(0.0, deadline - time.monotonic()))
        except QueueFull as exc:
            raise ProtocolError(ErrorCode.OVERLOADED, f"{exc}; retry later or with a higher priority") from None
        except BatcherClosed as exc:
            if task.model is not model and not self._stop.is_set():  # a new version took over: run it there
                return self._run_local(task, request, x, deadline)
            raise ProtocolError(ErrorCode.OVERLOADED, str(exc)) from None
        except TimeoutError:
            raise ProtocolError(ErrorCode.EXPIRED, "the deadline passed before the local model could answer") from None
        timings = {"queue": ran.queue_s * 1000, "local": ran.run_s * 1000}
        return ran.outputs, timings

    def _ask_cloud(self, task: _Task, request: InferRequest, x: np.ndarray, local_probs: np.ndarray | None,
                   deadline: float, reason: Reason, timings: dict[str, float]) -> InferReply | None:
        """The cloud's (or fused) answer, or None when it cannot be had in time (caller answers locally)."""
        assert self.offload is not None
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            return None
        cloud_request = InferRequest(task.model.task, {"input": x}, request.request_id, request.priority, remaining_ms)
        sent = time.monotonic()
        self.metrics.offloads.labels(task.model.task, reason.value).inc()
        self.metrics.offload_window.add(1.0)
        try:
            correlation, future = self.offload.submit(cloud_request)
        except OffloadUnavailable as exc:
            log.debug("offload of %s not sent: %s", request.request_id, exc)
            return None
        try:
            answer = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.offload.forget(correlation)
            log.info("cloud did not answer %s within its deadline; answering locally", request.request_id)
            return None
        except (ConnectionLost, ProtocolError) as exc:
            log.info("offload of %s failed (%s); answering locally", request.request_id, exc)
            return None
        if isinstance(answer, ErrorReply):
            log.info("cloud refused %s: %s %s", request.request_id, answer.code.value, answer.message)
            return None
        cloud_probs = next(iter(answer.outputs.values()), None)
        expected = (len(x), task.model.manifest.outputs[0].shape[-1]) if task.model.manifest else None
        if cloud_probs is None or cloud_probs.ndim != 2 or len(cloud_probs) != len(x) or \
                (expected is not None and cloud_probs.shape != expected) or not np.isfinite(cloud_probs).all():
            log.warning("ignored a cloud answer of shape %s for %s (expected %s)",
                        None if cloud_probs is None else cloud_probs.shape, request.request_id, expected)
            return None
        round_trip_ms = (time.monotonic() - sent) * 1000
        cloud_ms = answer.timings_ms.get("cloud", 0.0) + answer.timings_ms.get("queue", 0.0)
        if self.samples is not None:
            self.samples.add(request.request_id, task.model.task, x, cloud_probs)
        source, probs = Source.CLOUD, cloud_probs.astype(np.float32)
        if task.fusion_weight is not None and local_probs is not None:
            source, probs = Source.FUSED, fuse(local_probs, probs, task.fusion_weight)
        self.metrics.offload_ms.add(round_trip_ms)
        return InferReply({OUTPUT: probs}, answer.model_name, answer.model_version, request.request_id, source, False,
                          {**timings, "network": max(0.0, round_trip_ms - cloud_ms), "cloud": cloud_ms})

    def _local_reply(self, task: _Task, request: InferRequest, probs: np.ndarray, timings: dict[str, float], *,
                     degraded: bool, finite: bool) -> InferReply:
        """The local answer, or an error when ``probs`` are not ``finite``: NaN is no answer (nor valid JSON).

        Callers say whether they are: a confidence computed from them already tells, at no extra cost.
        """
        if not finite:
            raise ProtocolError(ErrorCode.INTERNAL, f"the local model {task.model.name} v{task.model.version} gave a"
                                                    " non-finite output for this input (far outside what it was"
                                                    " trained on?) and no cloud answer replaced it")
        self.metrics.local_ms.add(timings.get("local", 0.0))
        return InferReply({OUTPUT: probs}, task.model.name, task.model.version, request.request_id, Source.EDGE,
                          degraded, timings)

    def _pressure(self, task: _Task) -> Pressure:
        depth, wait_ms = task.model.batcher.load()
        offload = self.offload
        if offload is None:
            return Pressure(depth, wait_ms, 0, False, False)
        status = offload.cloud_status
        return Pressure(depth, wait_ms, offload.inflight, offload.connected, status is not None and not status.overloaded)

    def _count(self, task: str, reply: InferReply, started: float) -> None:
        source = reply.source.value
        self.metrics.answers.add(task, source, "degraded" if reply.degraded else source, time.monotonic() - started)

    # -- what the HTTP API needs -----------------------------------------------------------
    def model_metadata(self, name: str) -> dict[str, Any] | None:
        task = self._tasks.get(name)
        if task is None:
            return None
        spec = task.model.spec.input
        return {
            "name": name,
            "versions": [task.model.version],
            "platform": "onnxruntime",
            "inputs": [{"name": spec.name, "datatype": dtypes.by_name(spec.dtype).oip,  # what infer takes: FP32
                        "shape": [-1 if d is None else d for d in spec.shape]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, -1]}],
        }

    def feedback(self, request_id: str, label: int, task: str | None = None) -> bool:
        """Label an answer: kept as a training label if its sample is stored, counted if it is recent.

        False when there is nothing to label (or, with ``task``, only another task's answer). ValueError
        when the label names no class of the answer (it would teach and count nonsense): the recent answer
        and the stored sample each know their classes, so a label is checked while either is there.
        """
        if not 0 <= label < MAX_LABEL:
            raise ValueError(f"label {label} is not a class (0 to {MAX_LABEL - 1})")
        counted = self.answers.feedback(request_id, label, task)  # checks the label against the answer's classes first
        kept = self.samples is not None and self.samples.feedback(request_id, label, task)
        return kept or counted

    def metrics_text(self) -> tuple[bytes, str]:
        for name, task in self._tasks.items():
            self.metrics.queue_depth.labels(name).set(task.model.batcher.depth)
        self.metrics.inflight.set(self.offload.inflight if self.offload else 0)
        self.metrics.broker_connected.set(1 if self.offload and self.offload.connected else 0)
        return self.metrics.exposition()

    # -- heartbeat -------------------------------------------------------------------------
    def heartbeat(self) -> dict[str, Any]:
        """What the cloud's device registry learns about this agent."""
        m = self.metrics
        return {
            "device_id": self.device_id,
            "kind": self.profile.device.kind,
            "models": {name: t.model.version for name, t in self._tasks.items()},
            "offload_rate": m.offload_window.mean() or 0.0,
            "queue_depth": {name: t.model.batcher.depth for name, t in self._tasks.items()},
            "latency_ms": {"local": {"p50": m.local_ms.percentile(50), "p99": m.local_ms.percentile(99)},
                           "offload": {"p50": m.offload_ms.percentile(50), "p99": m.offload_ms.percentile(99)}},
            "cpu_seconds": time.process_time(),
            "rss_mb": rss_mb(os.getpid()),
            "uptime_s": time.monotonic() - self._started_at,
            "sent_at": time.time(),
            "group": self.profile.updates.group,
            "feedback": self.answers.heartbeat(),
            **(self.updater.heartbeat() if self.updater is not None else {"updates": {}}),
        }

    def _heartbeat_loop(self) -> None:
        interval = self.profile.metrics.heartbeat_interval_s
        while not self._stop.wait(interval):
            if self.offload is not None:
                self.offload.publish_json(self.topics.device_heartbeat(self.device_id), self.heartbeat())

