"""`fedge-cloud acl` and the fleet ACL on a real broker: devices stay apart and cannot pose as the cloud."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from agent.protocol import Topics
from cloud.fleet.access import load_fleet
from cloud.local.mosquitto import Mosquitto
from tests.mqtt_helpers import Inbox, client, subscribe

FEDGE_CLOUD = str(Path(sys.executable).with_name("fedge-cloud"))
TOPICS = Topics()


def test_acl_command_writes_files_and_keeps_secrets(tmp_path: Path) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices: [pi4-kitchen-01, gw-plant-a]\n")
    out = tmp_path / "access"
    first = subprocess.run([FEDGE_CLOUD, "acl", "--devices", str(devices), "--out", str(out)],
                           capture_output=True, check=False, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "new secrets" in first.stdout and "acl_file" in first.stdout
    secret = out / "secrets" / "pi4-kitchen-01"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    users = [line.split(":")[0] for line in (out / "passwords").read_text().splitlines()]
    assert users == ["pi4-kitchen-01", "gw-plant-a", "worker", "coordinator"]
    assert "topic read fedge/v1/device/gw-plant-a/reply" in (out / "acl").read_text()
    before = secret.read_text()
    again = subprocess.run([FEDGE_CLOUD, "acl", "--devices", str(devices), "--out", str(out)],
                           capture_output=True, check=False, text=True, timeout=60)
    assert again.returncode == 0 and "new secrets" not in again.stdout
    assert secret.read_text() == before


def test_bad_devices_file_names_the_problem(tmp_path: Path) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices: [a/b]\n")
    result = subprocess.run([FEDGE_CLOUD, "acl", "--devices", str(devices)],
                            capture_output=True, check=False, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "'a/b'" in result.stderr and "Traceback" not in result.stderr
    devices.write_text("devices: [a]\nworkerz: [w]\n")
    result = subprocess.run([FEDGE_CLOUD, "acl", "--devices", str(devices)],
                            capture_output=True, check=False, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "workerz: unknown key" in result.stderr


def test_generated_access_on_a_real_broker(tmp_path: Path) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices: [dev-a, dev-b]\n")
    out = tmp_path / "access"
    subprocess.run([FEDGE_CLOUD, "acl", "--devices", str(devices), "--out", str(out)], check=True,
                   capture_output=True, timeout=60)
    secrets = {p.name: p.read_text().strip() for p in (out / "secrets").iterdir()}
    with Mosquitto(tmp_path / "broker", users=secrets, acl=(out / "acl").read_text()) as broker:
        def as_user(name: str):  # type: ignore[no-untyped-def]
            return client(broker, name, username=name, password=secrets[name])

        with as_user("dev-a") as a, as_user("dev-b") as b, as_user("worker") as w, as_user("coordinator") as c:
            a_inbox = Inbox(a)
            subscribe(a, TOPICS.cloud_status)
            subscribe(a, TOPICS.device_reply("dev-a"))
            subscribe(a, TOPICS.device_reply("dev-b"))  # granted by Mosquitto 2.0, filtered on delivery
            b.publish(TOPICS.cloud_status, b'{"healthy": false}', qos=1).wait_for_publish(5)  # a fake status
            w.publish(TOPICS.device_reply("dev-b"), b"for b", qos=1).wait_for_publish(5)
            c.publish(TOPICS.cloud_status, b'{"healthy": true}', qos=1).wait_for_publish(5)
            w.publish(TOPICS.device_reply("dev-a"), b"for a", qos=1).wait_for_publish(5)
            assert a_inbox.get().payload == b'{"healthy": true}'  # the coordinator's, not dev-b's fake
            assert a_inbox.get().payload == b"for a"
            assert a_inbox.empty_after(0.3)
    assert load_fleet(devices).workers == ["worker"]
