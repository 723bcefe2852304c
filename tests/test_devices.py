"""The device registry fed over a real broker: heartbeats, Last Will on kill -9, garbage; `fedge-cloud devices`."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.protocol import Topics
from cloud.fleet.commands import ago
from cloud.fleet.devices import DeviceListener
from cloud.local.mosquitto import Mosquitto
from cloud.registry import DeviceRecord, Registry, open_registry
from tests.mqtt_helpers import client, eventually

PREFIX = "fedge/test"
TOPICS = Topics(PREFIX)

# A device as an agent is on the wire: Last Will "offline", retained "online", one heartbeat; then it waits.
DEVICE = """
import json, sys
from agent.mqtt_client import connect, new_client
from agent.protocol import OFFLINE, ONLINE
from agent.protocol import Topics
port, device, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
topics = Topics(prefix)
c = new_client(device)
c.will_set(topics.device_status(device), OFFLINE, qos=1, retain=True)
connect(c, "127.0.0.1", port)
c.publish(topics.device_status(device), ONLINE, qos=1, retain=True).wait_for_publish(5)
beat = {"device_id": device, "kind": "raspberry-pi-4", "models": {"mnist1d": 3}, "offload_rate": 0.25,
        "latency_ms": {"local": {"p50": 2.0, "p99": 6.0}, "offload": {"p50": 11.0, "p99": 40.0}}}
c.publish(topics.device_heartbeat(device), json.dumps(beat), qos=1).wait_for_publish(5)
print("sent", flush=True)
sys.stdin.read()
"""


def device(registry: Registry, device_id: str) -> DeviceRecord | None:
    return next((d for d in registry.devices() if d.device_id == device_id), None)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with open_registry(tmp_path / "registry.db") as opened:
        yield opened


@pytest.fixture
def listener(registry: Registry, broker: Mosquitto) -> Iterator[DeviceListener]:
    with DeviceListener(registry, broker.settings, PREFIX) as running:
        yield running


def test_heartbeat_then_kill_9_shows_online_then_offline(listener: DeviceListener, registry: Registry,
                                                         broker: Mosquitto) -> None:
    agent = subprocess.Popen([sys.executable, "-c", DEVICE, str(broker.port), "pi-7", PREFIX],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "sent"
        assert eventually(lambda: (d := device(registry, "pi-7")) is not None and d.online and d.models != {})
        seen = device(registry, "pi-7")
        assert seen is not None
        assert (seen.kind, seen.group, seen.models, seen.offload_rate, seen.p99_ms) == (
            "raspberry-pi-4", "raspberry-pi-4", {"mnist1d": "3"}, 0.25, 40.0)
    finally:
        agent.kill()  # SIGKILL: no DISCONNECT, so the broker publishes the Last Will
        agent.wait(10)
    assert eventually(lambda: (d := device(registry, "pi-7")) is not None and not d.online)
    events = [h["event"] for h in registry.device_history("pi-7")]
    assert events[0] == "offline" and "heartbeat" in events


def test_retained_status_reaches_a_listener_started_later(registry: Registry, broker: Mosquitto) -> None:
    with client(broker, "gone") as c:
        c.publish(TOPICS.device_status("zero-1"), b"offline", qos=1, retain=True).wait_for_publish(5)
    with DeviceListener(registry, broker.settings, PREFIX):
        assert eventually(lambda: device(registry, "zero-1") is not None)
    assert device(registry, "zero-1").online is False  # type: ignore[union-attr]


def test_garbage_is_ignored_and_the_listener_keeps_going(listener: DeviceListener, registry: Registry,
                                                         broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloud.fleet.devices")
    garbage = [b"\xff\x00not json", b"[1, 2]", json.dumps({"kind": 5}).encode(),
               json.dumps({"offload_rate": "lots"}).encode(), json.dumps({"device_id": "other"}).encode()]
    with client(broker, "fake") as c:
        for i, body in enumerate(garbage):
            c.publish(TOPICS.device_heartbeat(f"bad-{i}"), body, qos=1).wait_for_publish(5)
        c.publish(TOPICS.device_status("bad-s"), b"maybe", qos=1).wait_for_publish(5)
        c.publish(TOPICS.device_heartbeat("good"), json.dumps({"kind": "jetson"}), qos=1).wait_for_publish(5)
    assert eventually(lambda: device(registry, "good") is not None)
    assert [d.device_id for d in registry.devices()] == ["good"]
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == len(garbage) + 1
    assert any("offload_rate" in m for m in ignored) and any("not the one of its topic" in m for m in ignored)


# -- the command ----------------------------------------------------------------------------
def test_devices_command_table_json_and_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cloud.cli import main  # torch comes with the CLI: import it only where the CLI runs

    path = tmp_path / "registry.db"
    assert main(["devices", "--registry", str(path)]) == 3
    assert "no registry" in capsys.readouterr().err and not path.exists()
    with open_registry(path) as registry:
        registry.record_heartbeat("pi-1", {"kind": "raspberry-pi-4", "models": {"mnist1d": 2}, "offload_rate": 0.125,
                                           "latency_ms": {"local": {"p99": 4.0}, "offload": {"p99": 30.5}}}, 1.0e9)
        registry.record_heartbeat("gw-1", {"kind": "x86-gateway", "group": "plant-a"}, 1.0e9)
        registry.record_presence("gw-1", False, 1.0e9 + 5)
    assert main(["devices", "--registry", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["device", "kind/group", "online", "models", "offload", "p99", "ms", "last", "seen"]
    gw, pi = lines[1].split(), lines[2].split()
    assert gw[:6] == ["gw-1", "x86-gateway/plant-a", "no", "-", "-", "-"] and lines[1].endswith("d ago")
    assert pi[:6] == ["pi-1", "raspberry-pi-4", "yes", "mnist1d:v2", "12.5%", "30.5"] and lines[2].endswith("d ago")
    assert main(["devices", "--registry", f"sqlite:///{path}", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["device_id"], r["online"], r["group"], r["p99_ms"]) for r in rows] == [
        ("gw-1", False, "plant-a", None), ("pi-1", True, "raspberry-pi-4", 30.5)]
    assert main(["devices", "--registry", str(path), "--history", "gw-1"]) == 0
    history = capsys.readouterr().out.splitlines()
    assert "offline" in history[0] and "heartbeat" in history[1] and "plant-a" in history[1]
    assert main(["devices", "--registry", str(path), "--history", "nobody"]) == 2
    assert "no history for device 'nobody'" in capsys.readouterr().err
    assert main(["devices", "--registry", "mysql://db/x"]) == 2
    assert "postgresql://" in capsys.readouterr().err


@pytest.mark.parametrize("seconds, shown", [(-1.0, "0s ago"), (3.7, "3s ago"), (125, "2m ago"), (7300, "2h ago"),
                                            (3 * 86400 + 5, "3d ago")])
def test_last_seen_reads_as_time_ago(seconds: float, shown: str) -> None:
    assert ago(seconds) == shown


def test_fedge_cloud_listen_feeds_the_registry_alone_and_stops_on_sigterm(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "alone.db"
    listen = subprocess.Popen([str(Path(sys.executable).with_name("fedge-cloud")), "listen", "--broker", broker.url,
                               "--prefix", PREFIX, "--registry", str(db)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert listen.stdout is not None and "listening on" in listen.stdout.readline()
        with client(broker, "pi") as c:
            beat = {"device_id": "pi-9", "kind": "raspberry-pi-4", "models": {"mnist1d": 2}}
            c.publish(TOPICS.device_heartbeat("pi-9"), json.dumps(beat), qos=1).wait_for_publish(5)
        with open_registry(db) as registry:
            assert eventually(lambda: device(registry, "pi-9") is not None)
            assert device(registry, "pi-9").models == {"mnist1d": "2"}  # type: ignore[union-attr]
    finally:
        listen.send_signal(signal.SIGTERM)
        _, stderr = listen.communicate(timeout=10)
    assert listen.returncode == 0 and "Traceback" not in stderr, stderr


def test_fedge_cloud_listen_names_a_broker_it_cannot_reach(tmp_path: Path) -> None:
    from cloud.local.mosquitto import free_port

    result = subprocess.run([str(Path(sys.executable).with_name("fedge-cloud")), "listen", "--broker",
                             f"mqtt://127.0.0.1:{free_port()}", "--registry", str(tmp_path / "r.db")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 3 and "cannot reach MQTT broker" in result.stderr and "Traceback" not in result.stderr
