"""The simplest worker that speaks the wire contract: every request is answered with ``answer(input)``.

Tests and benchmarks use it as the cloud until the coordinator's scheduled
workers serve, and it is the reference for writing a worker in another
language: subscribe to the shared infer topic, decode, answer in the
request's kind on its Response Topic with its Correlation Data, and turn
every bad request into an error reply. It also publishes the retained cloud
status agents look for before they offload.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from agent.mqtt_client import connect, new_client
from agent.protocol import (
    BodyKind,
    ErrorReply,
    InferReply,
    ProtocolError,
    Source,
    Topics,
    decode_request,
    encode_reply,
    reply_topic,
)


class ReferenceWorker:
    """Serves ``…/infer/+`` on the shared subscription with one function."""

    def __init__(self, answer: Callable[[np.ndarray], np.ndarray], topics: Topics | None = None,
                 model_name: str = "reference", model_version: str = "1") -> None:
        self.answer = answer
        self.topics = topics or Topics()
        self.model_name, self.model_version = model_name, model_version
        self.served = 0
        self.silent = threading.Event()  # set it to stop answering (a dead cloud)
        self._client: mqtt.Client | None = None

    def start(self, host: str, port: int, client_id: str | None = None) -> ReferenceWorker:
        """Connect, subscribe (waiting for the SUBACK) and publish a healthy retained status."""
        c = new_client(client_id or f"reference-worker-{uuid.uuid4().hex[:8]}")
        subscribed = threading.Event()
        c.on_subscribe = lambda *_: subscribed.set()
        c.on_message = self._on_message
        connect(c, host, port)
        c.subscribe(self.topics.shared_infer(), qos=1)
        if not subscribed.wait(5):
            raise TimeoutError("no SUBACK for the shared infer subscription")
        c.publish(self.topics.cloud_status, json.dumps({"healthy": True, "overloaded": False}), qos=1,
                  retain=True).wait_for_publish(5)
        self._client = c
        return self

    def stop(self) -> None:
        """Clear the retained status (when the broker is still there) and disconnect."""
        c, self._client = self._client, None
        if c is None:
            return
        cleared = c.publish(self.topics.cloud_status, b"", qos=1, retain=True)
        if cleared.rc == mqtt.MQTT_ERR_SUCCESS:  # the broker may have gone between any check and this publish
            cleared.wait_for_publish(5)
        c.disconnect()
        c.loop_stop()

    def _on_message(self, c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self.silent.is_set():
            return
        task = self.topics.task_of(msg.topic) or ""
        kind = BodyKind.RAW
        try:
            request = decode_request(task, msg.payload, msg.properties)
            kind = request.kind
            reply: InferReply | ErrorReply = InferReply(
                {"output": self.answer(request.tensor)}, self.model_name, self.model_version, request.request_id,
                Source.CLOUD,
            )
        except ProtocolError as exc:
            reply = ErrorReply(exc.code, exc.message)
        self.served += 1
        topic = reply_topic(msg.properties, self.topics.default_reply(task) if task else None)
        if topic is None:
            return  # nowhere a reply may go (see unanswerable): the reference drops it, as the workers do
        payload, props = encode_reply(reply, kind, msg.properties)
        c.publish(topic, payload, qos=1, properties=props)
