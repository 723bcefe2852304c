"""A cloud worker: takes requests from the shared subscription, picks a model, schedules, batches, answers.

Each worker process holds every served model (see served.py: several per task,
e.g. a large and a small one). The broker spreads requests over the workers
of the share group; each worker picks a model per request (selection.py),
queues it by priority and deadline, runs batches of one model, and answers
every request exactly once: outputs (fused with the edge's probabilities when
the request asks for fusion), ``expired`` (never run after its deadline),
``overloaded`` (shed, lowest priority first) or the protocol's error for a
bad request.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.confidence import fuse, top_labels
from agent.feeds import Rows, fit_inputs, named, sliced, stacked
from agent.model_store import ModelStore
from agent.mqtt_client import BrokerSettings, Unacknowledged, connect, new_client
from agent.protocol import (
    BodyKind,
    ErrorCode,
    ErrorReply,
    InferReply,
    InferRequest,
    ProtocolError,
    Source,
    Topics,
    body_kind,
    decode_request,
    encode_reply,
    reply_topic,
    unanswerable,
)
from cloud.registry import open_registry
from cloud.serving.scheduler import Job, JobQueue
from cloud.serving.selection import UnknownModel, choose
from cloud.serving.served import ActiveVersions, ServedModel, load_served
from cloud.serving.stats import WorkerStats

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 10.0
LEAVE_TIMEOUT_S = 5.0  # bounds each step of leaving: the broker's acknowledgements, the fence, the last answers
EDGE_PROBS = "edge_probs"  # the request input carrying the edge model's probabilities, for fusion


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs; plain values so it crosses a process boundary."""

    store: Path
    broker: BrokerSettings
    worker_id: str
    topic_prefix: str = "fedge/v1"
    share_group: str = "workers"
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256
    threads: int = 1
    status_interval_s: float = 1.0
    registry_url: str | None = None  # devices and model states; tasks with active versions there serve those
    models: dict[str, list[str]] | None = None  # task -> the only names to serve


@contextmanager
def registry_at(url: str | None) -> Iterator[ActiveVersions | None]:
    """The registry at ``url`` while the block runs (closed after), or None to serve from the store alone."""
    if url is None:
        yield None
        return
    with open_registry(url) as registry:
        yield registry


def load_settings_models(settings: WorkerSettings) -> dict[str, list[ServedModel]]:
    """The models ``settings`` asks to serve, loaded and warmed up."""
    with registry_at(settings.registry_url) as registry:
        return load_served(ModelStore(settings.store), settings.threads, settings.max_batch, registry,
                           settings.models)


class Worker:
    """One worker: an MQTT client feeding a JobQueue, and a thread running batches."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.models = load_settings_models(settings)
        self._by_name = {(m.task, m.name): m for served in self.models.values() for m in served}
        self._all = list(self._by_name.values())
        self.queue = JobQueue(settings.max_queue)
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._unacknowledged = Unacknowledged()
        self._client = new_client(f"fedge-worker-{settings.worker_id}", settings.broker)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect

    def run(self) -> None:
        """Serve until ``stop``; reconnects by itself if the broker goes away."""
        broker = self.settings.broker
        connect(self._client, broker.host, broker.port, keepalive=broker.keepalive_s)
        runner = threading.Thread(target=self._run_batches, name="fedge-worker-batches", daemon=True)
        runner.start()
        while not self._stop.wait(self.settings.status_interval_s):
            self._client.publish(self.status_topic, json.dumps(self.status()), qos=0)
        self._leave_share_group()
        self.queue.close()
        runner.join(10)
        if unsent := self._unacknowledged.wait(LEAVE_TIMEOUT_S):
            log.warning("worker %s leaves with %d answers the broker has not acknowledged", self.settings.worker_id,
                        unsent)
        self._client.disconnect()
        self._client.loop_stop()

    def stop(self) -> None:
        self._stop.set()

    def _leave_share_group(self) -> None:
        """Take no more requests, and queue every one the broker had already given this worker.

        The broker keeps sending those after its UNSUBACK (they wait in this client's session, paced by the
        in-flight window) and drops what is left when the client disconnects. So the worker fences its session:
        it subscribes to its own report topic as it unsubscribes, and once both are acknowledged publishes its
        last report there. The broker queues that report behind every request it still owes this worker: when
        it comes back, none is left, however slow the broker or this process is. A request in flight to a
        worker that stops is answered, not lost.
        """
        fence = {"worker_id": self.settings.worker_id, "leaving": uuid.uuid4().hex}
        acknowledged, fenced = threading.Event(), threading.Event()
        refused: list[ReasonCode] = []

        def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
            refused.extend(r for r in reasons if r.is_failure)

        def on_fence(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            if _fence_of(msg.payload) == fence["leaving"]:
                fenced.set()

        self._client.on_subscribe = on_subscribe
        self._client.on_unsubscribe = lambda *_: acknowledged.set()
        self._client.message_callback_add(self.status_topic, on_fence)
        subscribed, _ = self._client.subscribe(self.status_topic, qos=1)
        left, _ = self._client.unsubscribe(self.topics.shared_infer(self.settings.share_group))
        sent = subscribed == left == mqtt.MQTT_ERR_SUCCESS
        if not sent or not acknowledged.wait(LEAVE_TIMEOUT_S):
            return  # not connected: nothing more is coming
        if refused:
            log.warning("worker %s may not read its own report topic %s (%s): requests the broker still holds for"
                        " it are lost as it leaves; grant the workers `topic readwrite %s` (fedge-cloud acl does)",
                        self.settings.worker_id, self.status_topic, refused[0], self.topics.worker_reports)
            return
        self._unacknowledged.add(self._client.publish(self.status_topic, json.dumps(fence), qos=1))
        if not fenced.wait(LEAVE_TIMEOUT_S):
            log.warning("worker %s left without its fence coming back within %g s: requests the broker still held"
                        " for it may be lost (may it read %s? fedge-cloud acl grants `topic readwrite %s`)",
                        self.settings.worker_id, LEAVE_TIMEOUT_S, self.status_topic, self.topics.worker_reports)

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        """Join the share group after every (re)connect, unless stopping: a reconnect while draining must not rejoin."""
        if not self._stop.is_set():
            client.subscribe(self.topics.shared_infer(self.settings.share_group), qos=1)

    @property
    def status_topic(self) -> str:
        return self.topics.worker_report(self.settings.worker_id)

    def status(self) -> dict[str, Any]:
        return self.stats.report(self.settings.worker_id, self.models, self.queue.depths(), self.queue.max_depth)

    # -- receiving (network thread) -----------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """Answer or queue one request.

        Nothing may escape: paho re-raises a callback's exception, and its network thread would die
        silently (no replies, nothing received, and nobody notices).
        """
        target: tuple[str, Properties | None] | None = None
        request: InferRequest | None = None
        try:
            task = self.topics.task_of(msg.topic)
            topic = reply_topic(msg.properties, self.topics.default_reply(task) if task else None)
            if topic is None:  # one line, no traceback: the requester gave nowhere a reply may go
                self.stats.count("errors")
                log.warning("dropped a request on %s: %s", msg.topic, unanswerable(msg.properties))
                return
            target = (topic, msg.properties)
            try:
                if not task:
                    raise ProtocolError(ErrorCode.BAD_REQUEST, f"the request's topic {msg.topic!r} names no task:"
                                                               f" publish to {self.topics.infer('<task>')}")
                request = decode_request(task, msg.payload, msg.properties)
                request, model = self._choose(request)
            except ProtocolError as exc:
                self.stats.count("errors")
                self._answer(ErrorReply(exc.code, exc.message, request.request_id if request else ""),
                             body_kind(msg.properties), target)
                return
            self._queue(request, model, target)
        except Exception as exc:
            log.exception("failed on a request on %s; answering it with an internal error", msg.topic)
            self.stats.count("errors")
            if target is not None:
                self._answer_safely(ErrorReply(ErrorCode.INTERNAL, f"the worker failed on this request: {exc}",
                                               request.request_id if request else ""),
                                    request.kind if request else body_kind(msg.properties), target)

    def _queue(self, request: InferRequest, model: str, target: tuple[str, Properties | None]) -> None:
        shed = self.queue.put(request, time.monotonic() + self._timeout_s(request), target, model=model)
        if shed is not None:
            self.stats.count("shed")
            self._answer(ErrorReply(ErrorCode.OVERLOADED, "the cloud queue is full; lower-priority requests are shed"
                                    " first", shed.request.request_id), shed.request.kind, shed.reply_to)

    @staticmethod
    def _timeout_s(request: InferRequest) -> float:
        return DEFAULT_TIMEOUT_S if request.timeout_ms is None else request.timeout_ms / 1000

    def _choose(self, request: InferRequest) -> tuple[InferRequest, str]:
        """The model for a request, counted, and the request as that model takes it; ProtocolError if it cannot be."""
        served = self.models.get(request.task)
        if not served:
            raise ProtocolError(ErrorCode.UNKNOWN_TASK, f"no cloud model for task {request.task!r}; served: "
                                f"{', '.join(sorted(self.models))}")
        queued = {model: n for (_, model), n in self.queue.depths().items()}
        try:
            choice = choose(served, request.model, self._timeout_s(request) * 1000, queued, self.settings.max_batch,
                            self._all)
        except UnknownModel as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None
        request = fitted(request, choice.model)
        check_fusion(request, choice.model)
        self.stats.decided(request.task, choice.model.name, choice.reason)
        return request, choice.model.name

    # -- running (batch thread) ---------------------------------------------------------------
    def _run_batches(self) -> None:
        """Run batches until the queue closes; a failure fails the jobs it touched, never the thread."""
        s = self.settings
        while (taken := self.queue.take(s.max_batch, s.max_delay_ms / 1000)) is not None:
            batch, expired = taken
            for job in expired:
                self.stats.count("expired")
                self._answer_safely(ErrorReply(ErrorCode.EXPIRED, "the deadline passed before a worker could run it;"
                                               " not run", job.request.request_id), job.request.kind, job.reply_to)
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        model = self._by_name[(batch[0].request.task, batch[0].model)]
        started = time.monotonic()
        try:
            outputs = model.run(stacked([tuple(job.request.inputs[spec.name] for spec in model.inputs)
                                         for job in batch]))
        except Exception as exc:  # noqa: BLE001  # a bad batch fails its own requests, never the worker
            for job in batch:
                self._fail(job, f"model run failed: {exc}")
            return
        finished = time.monotonic()
        offset = 0
        for job in batch:
            end = offset + len(job.request.tensor)
            try:
                self._reply(job, model, sliced(outputs, offset, end), started, finished)
            except Exception as exc:  # one job's failure must not drop the rest of the batch
                log.exception("failed to answer request %s", job.request.request_id)
                self._fail(job, f"answering failed: {exc}")
            offset = end

    def _fail(self, job: Job, message: str) -> None:
        self.stats.count("errors")
        self._answer_safely(ErrorReply(ErrorCode.INTERNAL, message, job.request.request_id), job.request.kind,
                            job.reply_to)

    def _reply(self, job: Job, model: ServedModel, outputs: Rows, started: float, finished: float) -> None:
        request = job.request
        source = Source.CLOUD
        probs, *rest = outputs
        if request.fusion is not None:
            edge = request.inputs[EDGE_PROBS]
            if edge.shape != probs.shape:
                self.stats.count("errors")
                self._answer(ErrorReply(ErrorCode.SHAPE_MISMATCH, f"{EDGE_PROBS} has shape {list(edge.shape)}; "
                                        f"{model.name} answers {list(probs.shape)}", request.request_id),
                             request.kind, job.reply_to)
                return
            probs, source = fuse(edge.astype(np.float32, copy=False), probs, request.fusion), Source.FUSED
        timings = {"queue": (started - job.arrived) * 1000, "cloud": (finished - started) * 1000}
        self.stats.answered(request.task, (finished - job.arrived) * 1000)
        labels = top_labels(probs, model.labels) if model.kind != "other" else ()
        reply = InferReply(named((probs, *rest), model.answers), model.name, model.version,
                           request.request_id, source, False, timings, labels)
        self._answer(reply, request.kind, job.reply_to)

    def _answer(self, reply: InferReply | ErrorReply, kind: BodyKind, target: tuple[str, Properties | None]) -> None:
        topic, request_props = target
        payload, props = encode_reply(reply, kind, request_props)
        self._unacknowledged.add(self._client.publish(topic, payload, qos=1, properties=props))

    def _answer_safely(self, reply: ErrorReply, kind: BodyKind, target: tuple[str, Properties | None]) -> None:
        """``_answer`` where a failure is logged, not raised: the last resort of the error paths."""
        try:
            self._answer(reply, kind, target)
        except Exception:
            log.exception("could not send a %s error reply to %s", reply.code.value, target[0])


def _fence_of(payload: bytes | bytearray) -> str | None:
    """The ``leaving`` token of a worker's last report, or None for any other payload."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc.get("leaving") if isinstance(doc, dict) else None


def fitted(request: InferRequest, model: ServedModel) -> InferRequest:
    """The request with its inputs as ``model`` declares them (by name, batch axis added, finite), then any others.

    A wrong shape is the protocol's ``shape_mismatch``, never ONNX Runtime's error text as ``internal``.
    """
    x = fit_inputs(request.inputs, model.inputs, f"{model.name} (task {request.task})", cast=True,
                   reserved=(EDGE_PROBS,))
    fusion = {EDGE_PROBS: request.inputs[EDGE_PROBS]} if EDGE_PROBS in request.inputs else {}
    return replace(request, inputs={**named(x, model.inputs), **fusion})


def check_fusion(request: InferRequest, model: ServedModel) -> None:
    """A fusion request carries one row of edge probabilities per input row, for a model with class scores."""
    if request.fusion is None:
        return
    if model.kind == "other":
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"fusion mixes class scores, and {model.name} has none (its first"
                            f" output {model.answers[0].name!r} is not class scores)")
    edge = request.inputs.get(EDGE_PROBS)
    if edge is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"fusion asks for an {EDGE_PROBS!r} input with the edge model's "
                            "probabilities; the request has none")
    if edge.ndim != 2 or len(edge) != len(request.tensor) or edge.dtype.kind != "f":
        raise ProtocolError(ErrorCode.SHAPE_MISMATCH, f"{EDGE_PROBS} must be floats of shape [{len(request.tensor)}, "
                            f"classes], got {edge.dtype} {list(edge.shape)}")
    if not np.all(np.isfinite(edge)) or np.any(edge < 0):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{EDGE_PROBS} must be finite probabilities (>= 0)")


def run_worker(settings: WorkerSettings) -> None:
    """A coordinator's worker process: serve until SIGTERM (the coordinator's stop).

    SIGINT is ignored: a terminal's Ctrl-C reaches the workers too (one process group), and the coordinator
    would start a new one for each that stopped. (A coordinator on the main thread also starts them with
    SIGINT ignored, so a Ctrl-C while they import prints no traceback; from another thread it cannot.)
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker {settings.worker_id} %(levelname)s %(message)s")
    worker = Worker(settings)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    coordinator = multiprocessing.parent_process()
    if coordinator is not None:  # killed without a goodbye (SIGKILL, OOM): no orphan keeps taking requests

        def stop_with_coordinator() -> None:
            coordinator.join()
            worker.stop()

        threading.Thread(target=stop_with_coordinator, name="fedge-worker-orphan-watch", daemon=True).start()
    log.info("serving %s", ", ".join(f"{m.task}: {m.name} v{m.version}" for m in worker._all))
    worker.run()
