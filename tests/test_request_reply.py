"""Two paho v5 clients doing request/reply through a real broker with the protocol module."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from agent.protocol import (
    BodyKind,
    ErrorCode,
    ErrorReply,
    InferReply,
    InferRequest,
    Topics,
    decode_reply,
    encode_request,
)
from cloud.local.mosquitto import Mosquitto
from tests.mqtt_helpers import Inbox, client, subscribe
from tests.responder import Responder, responding

TOPICS = Topics()


@pytest.fixture
def responder(broker: Mosquitto) -> Iterator[Responder]:
    with responding(broker, lambda x: x * 2) as r:
        yield r


@pytest.mark.parametrize("kind", list(BodyKind))
def test_request_reply_both_payload_kinds(broker: Mosquitto, responder: Responder, kind: BodyKind) -> None:
    reply_to = TOPICS.device_reply("dev-1")
    with client(broker, "dev-1") as device:
        inbox = Inbox(device)
        subscribe(device, reply_to)
        x = np.arange(40, dtype=np.float32).reshape(1, 40)
        request = InferRequest("mnist1d", {"input": x}, timeout_ms=2000, kind=kind)
        payload, props = encode_request(request, response_topic=reply_to, correlation_data=b"corr-1")
        device.publish(TOPICS.infer("mnist1d"), payload, qos=1, properties=props)
        msg = inbox.get()
        assert msg.properties.CorrelationData == b"corr-1"
        reply = decode_reply(msg.payload, msg.properties)
        assert isinstance(reply, InferReply)
        assert reply.request_id == request.request_id
        np.testing.assert_array_equal(reply.outputs["output"], x * 2)


def test_request_without_correlation_or_response_topic_still_gets_a_reply(
    broker: Mosquitto, responder: Responder
) -> None:
    with client(broker, "generic") as generic:
        inbox = Inbox(generic)
        subscribe(generic, TOPICS.default_reply("digits"))
        body = b'{"inputs":[{"name":"input","shape":[2],"datatype":"INT32","data":[3,4]}]}'
        generic.publish(TOPICS.infer("digits"), body, qos=1)
        reply = decode_reply(inbox.get().payload, None)
        assert isinstance(reply, InferReply)
        assert reply.outputs["output"].tolist() == [6, 8]


def test_malformed_request_gets_an_error_reply(broker: Mosquitto, responder: Responder) -> None:
    reply_to = TOPICS.device_reply("dev-2")
    with client(broker, "dev-2") as device:
        inbox = Inbox(device)
        subscribe(device, reply_to)
        request = InferRequest("mnist1d", {"input": np.zeros((1, 40), np.float32)})
        payload, props = encode_request(request, response_topic=reply_to, correlation_data=b"bad")
        device.publish(TOPICS.infer("mnist1d"), payload[:-4], qos=1, properties=props)
        msg = inbox.get()
        reply = decode_reply(msg.payload, msg.properties)
        assert isinstance(reply, ErrorReply)
        assert reply.code is ErrorCode.SHAPE_MISMATCH
        assert msg.properties.CorrelationData == b"bad"
