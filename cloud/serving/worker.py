"""A cloud worker: takes requests from the shared subscription, schedules, batches, answers.

Each worker process holds every task's cloud model (the newest verified
``<task>-cloud`` release in the store). The broker spreads requests over the
workers of the share group; each worker queues them by priority and deadline,
runs batches of one task, and answers every request exactly once: outputs,
``expired`` (never run after its deadline), ``overloaded`` (shed, lowest
priority first) or the protocol's error for a bad request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from agent.confidence import softmax
from agent.model_store import ModelStore
from agent.mqtt_client import connect, new_client
from agent.protocol import (
    BodyKind,
    ErrorCode,
    ErrorReply,
    InferReply,
    ProtocolError,
    Source,
    Topics,
    body_kind,
    decode_request,
    encode_reply,
    reply_topic,
)
from agent.session import open_session
from cloud.serving.scheduler import Job, JobQueue

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs; plain values so it crosses a process boundary."""

    store: Path
    host: str
    port: int
    worker_id: str
    topic_prefix: str = "fedge/v1"
    share_group: str = "workers"
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256
    threads: int = 1
    status_interval_s: float = 1.0


@dataclass
class _Model:
    session: Any
    input_name: str
    name: str
    version: str
    temperature: float


def load_cloud_models(store: ModelStore, threads: int) -> dict[str, _Model]:
    """Every task's newest verified ``<task>-cloud`` model."""
    models = {}
    for task in store.tasks():
        name = f"{task}-cloud"
        if not store.versions(task, name):
            continue
        stored = store.verified(task, name)
        session = open_session(stored.model_path, intra_op_threads=threads)
        spec = stored.manifest.inputs[0]
        warm = np.zeros([d or 1 for d in spec.shape], dtype=spec.dtype)
        session.run(None, {spec.name: warm})  # the first run allocates; do it before a request waits on it
        models[task] = _Model(session, spec.name, name, str(stored.manifest.version), stored.manifest.temperature)
    if not models:
        raise LookupError(f"the store {store.root} holds no <task>-cloud model to serve; train one first: "
                          "fedge-cloud train --task mnist1d --model cloud")
    return models


class Worker:
    """One worker: an MQTT client feeding a JobQueue, and a thread running batches."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.models = load_cloud_models(ModelStore(settings.store), settings.threads)
        self.queue = JobQueue(settings.max_queue)
        self.served = self.expired = self.shed = self.errors = 0
        self._stop = threading.Event()
        self._client = new_client(f"fedge-worker-{settings.worker_id}")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(self.topics.shared_infer(settings.share_group), qos=1)

    def run(self) -> None:
        """Serve until ``stop``; reconnects by itself if the broker goes away."""
        connect(self._client, self.settings.host, self.settings.port)
        runner = threading.Thread(target=self._run_batches, name="fedge-worker-batches", daemon=True)
        runner.start()
        while not self._stop.wait(self.settings.status_interval_s):
            self._client.publish(self.status_topic, json.dumps(self.status()), qos=0)
        self.queue.close()
        runner.join(10)
        self._client.disconnect()
        self._client.loop_stop()

    def stop(self) -> None:
        self._stop.set()

    @property
    def status_topic(self) -> str:
        return f"{self.settings.topic_prefix}/cloud/workers/{self.settings.worker_id}"

    def status(self) -> dict[str, Any]:
        return {"worker_id": self.settings.worker_id, "queue_depth": len(self.queue), "served": self.served,
                "expired": self.expired, "shed": self.shed, "errors": self.errors, "tasks": sorted(self.models),
                "sent_at": time.time()}

    # -- receiving (network thread) -----------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        task = self.topics.task_of(msg.topic) or ""
        target = (reply_topic(msg.properties, self.topics.default_reply(task)), msg.properties)
        try:
            request = decode_request(task, msg.payload, msg.properties)
            if task not in self.models:
                raise ProtocolError(ErrorCode.UNKNOWN_TASK,
                                    f"no cloud model for task {task!r}; served: {', '.join(sorted(self.models))}")
        except ProtocolError as exc:
            self.errors += 1
            self._answer(ErrorReply(exc.code, exc.message), body_kind(msg.properties), target)
            return
        timeout_s = DEFAULT_TIMEOUT_S if request.timeout_ms is None else request.timeout_ms / 1000
        shed = self.queue.put(request, time.monotonic() + timeout_s, target)
        if shed is not None:
            self.shed += 1
            self._answer(ErrorReply(ErrorCode.OVERLOADED, "the cloud queue is full; lower-priority requests are shed"
                                    " first", shed.request.request_id), shed.request.kind, shed.reply_to)

    # -- running (batch thread) ---------------------------------------------------------------
    def _run_batches(self) -> None:
        s = self.settings
        while (taken := self.queue.take(s.max_batch, s.max_delay_ms / 1000)) is not None:
            batch, expired = taken
            for job in expired:
                self.expired += 1
                self._answer(ErrorReply(ErrorCode.EXPIRED, "the deadline passed before a worker could run it; not run",
                                        job.request.request_id), job.request.kind, job.reply_to)
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        model = self.models[batch[0].request.task]
        started = time.monotonic()
        try:
            x = np.concatenate([job.request.tensor for job in batch]).astype(np.float32, copy=False)
            probs = softmax(model.session.run(None, {model.input_name: x})[0], model.temperature)
        except Exception as exc:  # a bad batch fails its own requests, never the worker
            for job in batch:
                self.errors += 1
                self._answer(ErrorReply(ErrorCode.INTERNAL, f"model run failed: {exc}", job.request.request_id),
                             job.request.kind, job.reply_to)
            return
        run_ms = (time.monotonic() - started) * 1000
        offset = 0
        for job in batch:
            rows = len(job.request.tensor)
            queue_ms = (started - job.arrived) * 1000
            reply = InferReply({"probabilities": probs[offset:offset + rows]}, model.name, model.version,
                               job.request.request_id, Source.CLOUD, False, {"queue": queue_ms, "cloud": run_ms})
            offset += rows
            self.served += 1
            self._answer(reply, job.request.kind, job.reply_to)

    def _answer(self, reply: InferReply | ErrorReply, kind: BodyKind, target: tuple[str, Properties | None]) -> None:
        topic, request_props = target
        payload, props = encode_reply(reply, kind, request_props)
        self._client.publish(topic, payload, qos=1, properties=props)


def run_worker(settings: WorkerSettings) -> None:
    """Process entry point: serve until SIGTERM."""
    import signal

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker {settings.worker_id} %(levelname)s %(message)s")
    worker = Worker(settings)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    log.info("serving %s", ", ".join(f"{t}: {m.name} v{m.version}" for t, m in worker.models.items()))
    worker.run()
