"""The agent's offload connection against a real broker: replies, faults and reconnection."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt_client import BrokerSettings
from agent.protocol import InferReply, InferRequest, ProtocolError, Topics
from agent.uplink import ConnectionLost, OffloadUnavailable, Uplink
from cloud.local.mosquitto import Mosquitto
from tests.mqtt_helpers import Inbox, client, eventually, subscribe
from tests.responder import responding

TOPICS = Topics()


def offload_client(broker: Mosquitto, device: str = "dev-1", max_inflight: int = 8) -> Uplink:
    c = Uplink(device, TOPICS, BrokerSettings(broker.host, broker.port, reconnect_min_s=0.2,
                                                     reconnect_max_s=1.0), max_inflight=max_inflight)
    c.start()
    assert c.wait_connected(5)
    return c


def request(value: float = 1.0) -> InferRequest:
    return InferRequest("mnist1d", {"input": np.full((1, 40), value, np.float32)}, timeout_ms=2000)


def test_offload_round_trip_and_online_status(broker: Mosquitto) -> None:
    with client(broker, "watcher") as watcher:
        inbox = Inbox(watcher)
        subscribe(watcher, TOPICS.device_status("dev-1"))
        with responding(broker, lambda x: x + 1):
            agent = offload_client(broker)
            try:
                assert inbox.get().payload == b"online"
                _, future = agent.submit(request(2.0))
                reply = future.result(timeout=5)
                assert isinstance(reply, InferReply)
                assert float(reply.outputs["output"][0, 0]) == 3.0
                assert agent.inflight == 0
            finally:
                agent.stop()
        assert inbox.get().payload == b"offline"


def test_last_will_is_published_when_the_agent_dies(broker: Mosquitto) -> None:
    with client(broker, "watcher") as watcher:
        inbox = Inbox(watcher)
        subscribe(watcher, TOPICS.device_status("dev-9"))
        agent = offload_client(broker, "dev-9")
        assert inbox.get().payload == b"online"
        agent._client._sock_close()  # the socket dies without DISCONNECT, as when the process is killed
        agent._client.loop_stop()
        assert inbox.get(timeout=10).payload == b"offline"


def test_inflight_limit_and_silent_cloud(broker: Mosquitto) -> None:
    with responding(broker, lambda x: x) as cloud:
        cloud.silent.set()
        agent = offload_client(broker, max_inflight=2)
        try:
            _, first = agent.submit(request())
            agent.submit(request())
            with pytest.raises(OffloadUnavailable, match="2 offloads already in flight"):
                agent.submit(request())
            with pytest.raises(TimeoutError):
                first.result(timeout=0.3)
        finally:
            agent.stop()
        with pytest.raises(ConnectionLost):
            first.result(timeout=1)


def test_wrong_correlation_and_garbage_replies(broker: Mosquitto) -> None:
    agent = offload_client(broker)
    try:
        with client(broker, "fake-cloud") as fake:
            cloud_inbox = Inbox(fake)
            subscribe(fake, TOPICS.infer_filter)
            correlation, future = agent.submit(request())
            msg = cloud_inbox.get()
            stray = Properties(PacketTypes.PUBLISH)
            stray.CorrelationData = b"not-ours"
            fake.publish(agent.reply_topic, b"{}", qos=1, properties=stray).wait_for_publish(5)
            garbage = Properties(PacketTypes.PUBLISH)
            garbage.CorrelationData = msg.properties.CorrelationData
            fake.publish(agent.reply_topic, b"\xff\x00garbage", qos=1, properties=garbage).wait_for_publish(5)
            with pytest.raises(ProtocolError):
                future.result(timeout=5)
            assert agent.ignored_replies == 2
            assert correlation == msg.properties.CorrelationData
    finally:
        agent.stop()


def test_broker_killed_fails_inflight_then_offloading_resumes(broker: Mosquitto) -> None:
    agent = offload_client(broker)
    try:
        with responding(broker, lambda x: x) as cloud:
            cloud.silent.set()
            _, pending = agent.submit(request())
            broker.kill()
            with pytest.raises(ConnectionLost):
                pending.result(timeout=5)
            with pytest.raises(OffloadUnavailable):
                agent.submit(request())
        broker.start()
        assert agent.wait_connected(10), "the agent reconnects by itself"
        with responding(broker, lambda x: x * 3):
            _, future = agent.submit(request(1.0))
            reply = future.result(timeout=5)
            assert isinstance(reply, InferReply)
            assert float(reply.outputs["output"][0, 0]) == 3.0
    finally:
        agent.stop()


def test_a_failing_subscription_handler_is_logged_and_offloading_goes_on(
        broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    topic = "fedge/v1/test/boom"
    with client(broker, "publisher") as publisher:
        publisher.publish(topic, b"boom", qos=1, retain=True).wait_for_publish(5)
    agent = offload_client(broker)
    try:
        def explode(_msg: object) -> None:
            raise RuntimeError("handler bug")

        agent.subscribe(topic, explode)  # the retained message arrives before the reply below
        with responding(broker, lambda x: x + 1):
            _, future = agent.submit(request(1.0))
            assert isinstance(future.result(timeout=5), InferReply)
    finally:
        agent.stop()
    failures = [r for r in caplog.records if "handler of fedge/v1/test/boom failed" in r.getMessage()]
    assert failures and failures[0].exc_info is not None, caplog.text


def test_a_cloud_status_past_its_message_expiry_counts_as_absent(broker: Mosquitto) -> None:
    agent = offload_client(broker)
    try:
        with client(broker, "cloud") as cloud:
            cloud.publish(TOPICS.cloud_status, json.dumps({"healthy": True}).encode(), qos=1,
                          retain=True).wait_for_publish(5)
            assert eventually(lambda: agent.cloud_status is not None), "never saw the status"
            lasting = agent.cloud_status
            assert lasting is not None and lasting.expires_at is None
            assert not lasting.expired(time.monotonic() + 10**9)  # without the property: valid as long as it stands
            expiring = Properties(PacketTypes.PUBLISH)
            expiring.MessageExpiryInterval = 1
            cloud.publish(TOPICS.cloud_status, json.dumps({"healthy": True, "overloaded": True}).encode(), qos=1,
                          retain=True, properties=expiring).wait_for_publish(5)
            assert eventually(lambda: agent.cloud_status is not None and agent.cloud_status.overloaded), \
                "never saw the expiring status"
            assert eventually(lambda: agent.cloud_status is None), "the status outlived its Message Expiry"
    finally:
        agent.stop()
