"""The edge agent: one device's parts, built from its profile and wired together.

``Agent`` is what ``fedge-agent run`` starts and what tests and benchmarks run
in-process: the local models, the uplink to the cloud, the sample store, the
HTTP API, heartbeats and releases. What answers a request is the cascade
(agent/cascade.py): local first, the cloud when unsure or busy, always one
answer in time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.admission import Admission
from agent.audit import Auditor
from agent.cascade import DEFAULT_QUEUE_DEPTH, Cascade, Route
from agent.feedback import FeedbackTally
from agent.http_api import ApiServer
from agent.metrics import AgentMetrics, rss_mb
from agent.model_store import ModelStore
from agent.mqtt_client import BrokerSettings, TlsFiles
from agent.profile.schema import Profile
from agent.protocol import (
    DEFAULT_LIMITS,
    ErrorCode,
    InferReply,
    InferRequest,
    Limits,
    ProtocolError,
    Topics,
)
from agent.runtime import LocalModel
from agent.samples import SampleStore
from agent.steps import Steps, finish
from agent.uplink import Uplink

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; JetPack 6 boards run 3.10

    from agent.federated.supernode import SuperNode
    from agent.updates import Updater

log = logging.getLogger(__name__)
MAX_LABEL = 2**31  # a class index the sample store (SQLite INTEGER) and the cloud's counts can hold


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
        self._tasks: dict[str, Route] = {}
        self.cascade: Cascade | None = None  # made in start(), once the uplink and the sample store exist
        self.auditor: Auditor | None = None
        self.supernode: SuperNode | None = None  # set in start() when the profile takes part in federated rounds
        self.samples: SampleStore | None = None
        self.uplink: Uplink | None = None
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
        return BrokerSettings(b.host, b.port, tls, b.username, b.password("broker", profile.resolve_path), b.keepalive_s)

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
            depth = policy.max_queue_depth if policy else DEFAULT_QUEUE_DEPTH
            model = LocalModel.load(task, spec, p, self.store, max_queue_depth=depth)
            if policy is not None and model.output_kind == "other":
                model.batcher.close()
                raise ValueError(f"offload.{task}: the model {model.name} has no class scores (its output is"
                                 f" {model.output_kind!r}: boxes, embeddings or the like), so a confidence policy"
                                 f" cannot judge its answers; remove offload.{task} to serve it locally")
            self._tasks[task] = Route.of(model, policy)
        if p.updates.enabled:  # the release key is checked before anything connects
            from agent.updates import Updater  # signature checks load cryptography: only where updates are on

            self.updater = Updater(self, self._state_dir)
        samples = p.storage.samples
        self.samples = SampleStore(self._state_dir / "samples.db", enabled=samples.enabled, max_rows=samples.max_rows,
                                   max_bytes=samples.max_bytes, retention_days=samples.retention_days)
        # Releases and training windows come this way too; and a device that only answers locally still
        # reports to the fleet when its profile names a broker (heartbeats, the online/offline status).
        reports = p.metrics.enabled and "broker" in p.model_fields_set
        if p.offload or p.updates.enabled or p.federated.enabled or reports:
            inflight = max((policy.max_inflight for policy in p.offload.values()), default=1)
            self.uplink = Uplink(self.device_id, self.topics, self._broker, max_inflight=inflight,
                                         client_id=p.mqtt_client_id)
            self.uplink.start()
        if self.uplink is not None and any(route.audit_rate > 0 for route in self._tasks.values()):
            self.auditor = Auditor(self.uplink, self.samples, self.metrics)
        self.cascade = Cascade(self.metrics, self.uplink, self.samples, self._stop, self.auditor)
        if self.updater is not None and self.uplink is not None:
            self.updater.start(self.uplink)
        if p.api.enabled:
            self.api = ApiServer(self, p.api.host, self._api_port)
            self.api.start()
        if p.metrics.enabled and self.uplink is not None:
            self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="fedge-heartbeat", daemon=True)
            self._heartbeat.start()
        if p.federated.enabled and self.uplink is not None:
            from agent.federated.supernode import SuperNode  # subprocess control only: no torch, no Flower here

            self.supernode = SuperNode(p, self._state_dir / "samples.db", self._state_dir / "supernode.log")
            self.uplink.subscribe(self.topics.federated_window, self.supernode.on_window)
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
        if self.auditor is not None:
            self.auditor.stop()
        if self.supernode is not None:
            self.supernode.stop()
        if self.uplink is not None:
            self.uplink.stop()
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
        """Answer one request on this thread (raises ProtocolError for requests that cannot be served)."""
        return finish(self.answer_steps(request))

    def answer_steps(self, request: InferRequest) -> Steps:
        """``infer`` as steps (agent/steps.py), for a caller that drives many requests at once."""
        started = time.monotonic()
        task = self._tasks.get(request.task)
        if task is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TASK, f"no model for task {request.task!r}; "
                                                       f"this agent serves {', '.join(sorted(self._tasks))}")
        assert self.cascade is not None, "start() the agent first"
        try:
            reply = yield from self.cascade.steps(task, request, started)
        except ProtocolError as exc:
            self.metrics.errors.labels(request.task, exc.code.value).inc()
            raise
        self._count(request.task, reply, started)
        self.answers.answered(request.task, reply)
        return reply

    def _count(self, task: str, reply: InferReply, started: float) -> None:
        source = reply.source.value
        self.metrics.answers.add(task, source, "degraded" if reply.degraded else source, time.monotonic() - started)

    # -- what the HTTP API needs -----------------------------------------------------------
    def model_metadata(self, name: str) -> dict[str, Any] | None:
        task = self._tasks.get(name)
        if task is None:
            return None
        return task.model.metadata

    def admission(self, name: str) -> Admission[Any]:
        """How many HTTP requests for model ``name`` are worked on at once (an unknown model's: no limit)."""
        task = self._tasks.get(name)
        return task.model.admission if task is not None else Admission(None)

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
        self.metrics.inflight.set(self.uplink.inflight if self.uplink else 0)
        self.metrics.broker_connected.set(1 if self.uplink and self.uplink.connected else 0)
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
            "degraded": m.degraded_counts(),
            "audit": self.auditor.heartbeat() if self.auditor is not None else {},
            "federated": {} if self.supernode is None else {"supernode": self.supernode.running,
                                                            "window": self.supernode.window.run or None},
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
            if self.uplink is not None:
                self.uplink.publish_json(self.topics.device_heartbeat(self.device_id), self.heartbeat())

