"""A tiny cloud stand-in written on the protocol module: answers each request with ``f(input)``.

Used by tests until the real cloud workers serve; it speaks the same wire contract.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

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
from cloud.mosquitto import Mosquitto
from tests.mqtt_helpers import client, subscribe


class Responder:
    """Serves ``…/infer/+``; ``answer`` maps the input tensor to the output tensor."""

    def __init__(self, answer: Callable[[np.ndarray], np.ndarray], topics: Topics | None = None) -> None:
        self.answer = answer
        self.topics = topics or Topics()
        self.served = 0
        self.silent = threading.Event()  # set it to stop answering (a dead cloud)
        self.hold = threading.Event()  # set it to delay answers until cleared

    def on_message(self, c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self.silent.is_set():
            return
        task = self.topics.task_of(msg.topic) or ""
        kind = BodyKind.RAW
        try:
            request = decode_request(task, msg.payload, msg.properties)
            kind = request.kind
            reply: InferReply | ErrorReply = InferReply(
                {"output": self.answer(request.tensor)}, "responder", "1", request.request_id, Source.CLOUD
            )
        except ProtocolError as exc:
            reply = ErrorReply(exc.code, exc.message)
        self.served += 1
        payload, props = encode_reply(reply, kind, msg.properties)
        c.publish(reply_topic(msg.properties, self.topics.default_reply(task)), payload, qos=1, properties=props)


@contextmanager
def responding(broker: Mosquitto, answer: Callable[[np.ndarray], np.ndarray]) -> Iterator[Responder]:
    """A connected responder on the shared subscription, for the duration of the block."""
    responder = Responder(answer)
    with client(broker, "responder") as c:
        c.on_message = responder.on_message
        subscribe(c, responder.topics.shared_infer())
        status = responder.topics.cloud_status
        c.publish(status, json.dumps({"healthy": True, "overloaded": False}), qos=1, retain=True).wait_for_publish(5)
        try:
            yield responder
        finally:
            if c.is_connected():  # a test may have killed the broker under us
                c.publish(status, b"", qos=1, retain=True).wait_for_publish(5)  # clears the retained status
