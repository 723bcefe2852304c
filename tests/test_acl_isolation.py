"""The fleet ACL on a TLS broker, as deployed: a device can neither read another's answers nor pose as the cloud.

tests/test_broker_harness.py and tests/test_access.py prove the ACL on a plain
listener; here the same ACL (written by ``fedge-cloud acl``'s code) sits behind
TLS with client certificates, and the checks go further: wildcard
subscriptions, the victim still getting its own replies, and the retained
cloud status surviving a device's attempt to overwrite it.

Ordering makes the negative checks exact rather than timed: the broker
delivers one publisher's QoS 1 messages to a subscriber in order, so when a
later marker arrives first, the earlier forbidden message was never delivered.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.mqtt_client import TlsFiles
from agent.protocol import Topics
from cloud.local.mosquitto import Mosquitto, ServerTls
from tests.conftest import ACL, USERS
from tests.mqtt_helpers import Inbox, client, subscribe
from tests.tls_certs import make_certs

TOPICS = Topics()
REAL = json.dumps({"healthy": True, "overloaded": False, "workers_alive": 2}).encode()
FAKE = json.dumps({"healthy": False, "overloaded": True, "workers_alive": 0}).encode()


@dataclass(frozen=True)
class SecureBroker:
    broker: Mosquitto
    tls: TlsFiles

    def as_user(self, user: str) -> AbstractContextManager[mqtt.Client]:
        return client(self.broker, user, tls=self.tls, username=user, password=USERS[user])


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    """TLS with client certificates and the fleet's password file and ACL, as docs/OPERATIONS.md deploys it."""
    certs = make_certs(tmp_path / "certs")
    tls = ServerTls(certs.ca_file, certs.server_cert, certs.server_key, require_certificate=True)
    with Mosquitto(tmp_path / "broker", tls=tls, users=USERS, acl=ACL) as running:
        yield SecureBroker(running, TlsFiles(certs.ca_file, certs.client_cert, certs.client_key))


def publish_reason(c: mqtt.Client, topic: str, payload: bytes, *, retain: bool = False) -> Any:
    """Publish at QoS 1 and return the broker's PUBACK reason code (MQTT v5 says when it refused)."""
    acked = threading.Event()
    reasons: dict[int, Any] = {}

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        reasons[mid] = reason
        acked.set()

    c.on_publish = on_publish
    info = c.publish(topic, payload, qos=1, retain=retain)
    assert acked.wait(5), f"no PUBACK for {topic}"
    return reasons[info.mid]


def test_device_cannot_read_another_devices_replies(secure_broker: SecureBroker) -> None:
    with secure_broker.as_user("device-a") as a, secure_broker.as_user("device-b") as b, \
            secure_broker.as_user("worker") as w:
        a_inbox, b_inbox = Inbox(a), Inbox(b)
        subscribe(b, TOPICS.device_reply("device-b"))
        subscribe(a, TOPICS.device_reply("device-a"))
        # Every way device-a might ask for device-b's answers; Mosquitto 2.0 grants the SUBACKs
        # and filters on delivery, so what matters is what arrives.
        for topic in (TOPICS.device_reply("device-b"), "fedge/v1/device/+/reply", "fedge/v1/#", "#"):
            subscribe(a, topic)
        w.publish(TOPICS.device_reply("device-b"), b"for b", qos=1).wait_for_publish(5)
        w.publish(TOPICS.device_reply("device-a"), b"for a", qos=1).wait_for_publish(5)
        assert b_inbox.get().payload == b"for b"  # the owner still gets its answer
        got = a_inbox.get()
        assert (got.topic, got.payload) == (TOPICS.device_reply("device-a"), b"for a")  # nothing of b's came first


def test_device_cannot_pose_as_the_cloud_or_another_device(secure_broker: SecureBroker) -> None:
    with secure_broker.as_user("coordinator") as cloud, secure_broker.as_user("device-a") as a, \
            secure_broker.as_user("device-b") as b, secure_broker.as_user("worker") as w:
        assert not publish_reason(cloud, TOPICS.cloud_status, REAL, retain=True).is_failure
        b_inbox, cloud_inbox = Inbox(b), Inbox(cloud)
        subscribe(b, TOPICS.cloud_status)
        subscribe(b, TOPICS.device_reply("device-b"))
        subscribe(cloud, "fedge/v1/device/+/status")
        assert b_inbox.get().payload == REAL  # the retained status, as a device sees it on connect

        # device-a tries to overwrite the cloud status, answer device-b, and mark device-b offline.
        for topic, payload, retain in ((TOPICS.cloud_status, FAKE, True), (TOPICS.device_reply("device-b"), b"fake", False),
                                       (TOPICS.device_status("device-b"), b"offline", True)):
            assert publish_reason(a, topic, payload, retain=retain).is_failure, f"the broker accepted {topic} from device-a"

        # Markers from the rightful publishers, after device-a's attempts were acknowledged (and refused).
        w.publish(TOPICS.device_reply("device-b"), b"real reply", qos=1).wait_for_publish(5)
        b.publish(TOPICS.device_status("device-b"), b"online", qos=1, retain=True).wait_for_publish(5)
        assert b_inbox.get().payload == b"real reply"  # neither the fake status nor the fake reply came first
        status = cloud_inbox.get()
        assert (status.topic, status.payload) == (TOPICS.device_status("device-b"), b"online")

        with secure_broker.as_user("device-b") as late:  # a device connecting now reads the retained status
            late_inbox = Inbox(late)
            subscribe(late, TOPICS.cloud_status)
            assert late_inbox.get().payload == REAL
