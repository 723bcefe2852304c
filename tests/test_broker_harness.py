"""The real-broker harness itself: start/stop by PID, kill and restart, TLS, passwords and ACL."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt_client import BrokerConnectError, BrokerSettings, TlsFiles, connect, new_client
from cloud.fleet.passwords import password_hash
from cloud.local.mosquitto import Mosquitto, MosquittoError
from tests.conftest import TlsBroker
from tests.mqtt_helpers import Inbox, client, subscribe


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_broker_stops_by_pid(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    pid = broker.pid
    assert pid is not None and _alive(pid)
    assert "persistence false" in broker.config_text()
    broker.stop()
    assert not _alive(pid)
    with pytest.raises(OSError), socket.create_connection((broker.host, broker.port), timeout=1):
        pass


def test_kill_and_restart_on_the_same_port(broker: Mosquitto) -> None:
    port, old_pid = broker.port, broker.pid
    broker.restart()
    assert broker.port == port and broker.pid != old_pid
    with client(broker) as c:
        inbox = Inbox(c)
        subscribe(c, "t/x")
        c.publish("t/x", b"after restart", qos=1).wait_for_publish(5)
        assert inbox.get().payload == b"after restart"


def test_publish_and_receive_with_v5_properties(broker: Mosquitto) -> None:
    with client(broker) as a, client(broker) as b:
        inbox = Inbox(b)
        subscribe(b, "t/props")
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v")]
        props.CorrelationData = b"c1"
        a.publish("t/props", b"x", qos=1, properties=props)
        msg = inbox.get()
        assert msg.properties.UserProperty == [("k", "v")]
        assert msg.properties.CorrelationData == b"c1"


def test_tls_connection_needs_the_ca(tls_broker: TlsBroker) -> None:
    certs = tls_broker.certs
    good = TlsFiles(certs.ca_file, certs.client_cert, certs.client_key)
    with client(tls_broker.broker, tls=good) as c:
        inbox = Inbox(c)
        subscribe(c, "t/tls")
        c.publish("t/tls", b"secret", qos=1)
        assert inbox.get().payload == b"secret"
    plain = new_client("plain-on-tls")
    with pytest.raises(BrokerConnectError):
        connect(plain, "localhost", tls_broker.broker.port, timeout=2)
    other_ca = tls_broker.broker.workdir / "other"
    from tests.tls_certs import make_certs

    stranger = make_certs(other_ca)
    untrusting = new_client("wrong-ca", BrokerSettings(tls=TlsFiles(stranger.ca_file, stranger.client_cert,
                                                                   stranger.client_key)))
    with pytest.raises(BrokerConnectError, match="cannot reach"):
        connect(untrusting, "localhost", tls_broker.broker.port, timeout=2)


def test_wrong_password_is_refused_with_its_reason_code(acl_broker: Mosquitto) -> None:
    bad = new_client("intruder", BrokerSettings(username="device-a", password="wrong"))
    with pytest.raises(BrokerConnectError, match=r"refused: Not authorized|Bad user name or password"):
        connect(bad, acl_broker.host, acl_broker.port, timeout=3)
    anonymous = new_client("anonymous")
    with pytest.raises(BrokerConnectError, match="refused"):
        connect(anonymous, acl_broker.host, acl_broker.port, timeout=3)


def test_acl_keeps_devices_apart(acl_broker: Mosquitto) -> None:
    with client(acl_broker, username="device-a", password="pw-a") as a, \
         client(acl_broker, username="device-b", password="pw-b") as b, \
         client(acl_broker, username="worker", password="pw-worker") as w:
        a_inbox = Inbox(a)
        subscribe(a, "fedge/v1/device/device-a/reply")
        # device-a may try to read device-b's replies (Mosquitto 2.0 grants the SUBACK
        # and filters on delivery), but a worker's reply to device-b never reaches it.
        subscribe(a, "fedge/v1/device/device-b/reply")
        w.publish("fedge/v1/device/device-b/reply", b"for b", qos=1).wait_for_publish(5)
        # device-b may not pose as the cloud: its fake status is dropped by the broker.
        b_watch = Inbox(w)
        subscribe(w, "fedge/v1/infer/+")
        b.publish("fedge/v1/cloud/status", b"fake", qos=1).wait_for_publish(5)
        b.publish("fedge/v1/infer/mnist1d", b"req", qos=1).wait_for_publish(5)
        assert b_watch.get().payload == b"req"
        w.publish("fedge/v1/device/device-a/reply", b"for a", qos=1).wait_for_publish(5)
        assert a_inbox.get().payload == b"for a"
        assert a_inbox.empty_after(0.3)


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("cloud.local.mosquitto.os.access", lambda *_: False)
    with pytest.raises(MosquittoError, match="apt-get install -y mosquitto mosquitto-clients"):
        Mosquitto()


def test_password_hash_matches_mosquitto_format() -> None:
    # Reference value written by mosquitto_passwd 2.0.11 for "secret" with this salt.
    import base64

    salt = base64.b64decode("ooHEUfz1dgTyDH54")
    assert password_hash("secret", salt) == (
        "$7$101$ooHEUfz1dgTyDH54$Vod/VfJlopaD1EJ3HFYh+O1yXYvkmnkprEvfh6rz5a8fmt7v4lUaOOrD6EhYI8P4WdkzEWtMAU6A3TCC+CW/nA=="
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [("mqtt://h:1884", BrokerSettings("h", 1884)), ("mqtts://h", BrokerSettings("h", 8883, TlsFiles())),
     ("localhost", BrokerSettings("localhost", 1883))],
)
def test_broker_url(url: str, expected: BrokerSettings) -> None:
    assert BrokerSettings.from_url(url) == expected


def test_broker_url_keeps_credentials_and_its_scheme_decides_tls() -> None:
    base = BrokerSettings("profile-host", 8883, TlsFiles(Path("ca.pem")), "dev", "pw", keepalive_s=60)
    plain = BrokerSettings.from_url("mqtt://other:1884", base)
    assert (plain.host, plain.port, plain.tls, plain.username, plain.password, plain.keepalive_s) == \
        ("other", 1884, None, "dev", "pw", 60)
    assert BrokerSettings.from_url("mqtts://other", base).tls == TlsFiles(Path("ca.pem"))
    assert BrokerSettings.from_url("mqtts://other").tls == TlsFiles()  # the system's CAs


def test_bad_broker_url() -> None:
    with pytest.raises(ValueError, match="scheme"):
        BrokerSettings.from_url("http://h:1")
