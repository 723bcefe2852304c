"""The agent's side of a release, with a real broker, real ONNX Runtime sessions and real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent.agent import Agent
from agent.model_store import ModelStore
from agent.protocol import InferRequest, Topics
from agent.updates import HOLD_ENV, Release, artifact_topic
from cloud.keys import init_keys, load_private_key, sign
from cloud.mosquitto import Mosquitto
from cloud.release_channel import Heartbeats, ReleaseChannel
from cloud.rollout import signed_release
from tests.agent_support import profile_doc
from tests.release_support import (
    NAME,
    TASK,
    CloudSide,
    follower_profile,
    install_locally,
    make_cloud,
    recent_traffic,
)

FEDGE_AGENT = str(Path(sys.executable).with_name("fedge-agent"))
GROUP = "lab"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> CloudSide:
    return make_cloud(tmp_path_factory.mktemp("cloud"))


@pytest.fixture
def channel(broker: Mosquitto) -> Iterator[ReleaseChannel]:
    with ReleaseChannel(broker.host, broker.port, Topics()) as c:
        yield c


@contextmanager
def start_agent(tmp: Path, broker: Mosquitto, cloud: CloudSide, *versions: int) -> Iterator[Agent]:
    """An agent following group GROUP with ``versions`` installed and recent traffic the cloud labelled."""
    install_locally(cloud, tmp / "state" / "models", *versions)
    with Agent(follower_profile(tmp, broker, cloud, group=GROUP)) as agent:
        recent_traffic(agent, cloud)
        yield agent


def serving_version(agent: Agent) -> str:
    x = np.random.default_rng(2).normal(size=(1, 40)).astype(np.float32)
    return agent.infer(InferRequest(TASK, {"input": x})).model_version


def release(cloud: CloudSide, version: int, action: str = "install") -> Release:
    return signed_release(cloud.stored(version), action, GROUP, None, load_private_key(cloud.private_key))  # type: ignore[arg-type]


def send(channel: ReleaseChannel, cloud: CloudSide, rel: Release, artifact: bytes | None = None) -> None:
    m = rel.manifest
    if artifact is None:
        channel.publish_artifact(cloud.stored(m.version))
    else:
        channel._publish(artifact_topic(channel.topics, TASK, NAME, m.version), artifact)
    channel.publish_release(rel)


def outcome(channel: ReleaseChannel, device: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The device's reported outcome for the task, once ``done`` holds for it (from its heartbeats)."""
    found: dict[str, Any] = {}

    def check(heartbeats: Heartbeats) -> bool:
        beat = heartbeats.get(device, {})
        report = (beat.get("updates") or {}).get(TASK)
        if report and done(report):
            found.update(report, heartbeat=beat)
            return True
        return False

    assert channel.wait_until(check, 30), f"no matching report from {device}"
    return found


def test_a_good_signed_release_is_shadow_evaluated_and_swapped(tmp_path: Path, broker: Mosquitto,
                                                               cloud: CloudSide, channel: ReleaseChannel) -> None:
    with start_agent(tmp_path, broker, cloud, 1) as agent:
        assert serving_version(agent) == "1"
        rel = release(cloud, 2)
        send(channel, cloud, rel)
        report = outcome(channel, "test-dev", lambda r: r["issued_at"] == rel.issued_at.isoformat())
        assert report["state"] == "active", report
        assert "passed the shadow gate on 64" in report["reason"]
        assert report["heartbeat"]["group"] == GROUP
        assert serving_version(agent) == "2"
        assert agent.heartbeat()["models"][TASK] == "2"
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, NAME) == [1, 2]
    assert not list((tmp_path / "state" / "models" / ".staging").rglob("*.onnx"))


def _tampered(cloud: CloudSide) -> tuple[Release, bytes | None, str]:
    data = bytearray(cloud.stored(2).model_path.read_bytes())
    data[-5] ^= 0xFF
    return release(cloud, 2), bytes(data), "tampered or corrupted"


def _wrong_key(cloud: CloudSide) -> tuple[Release, bytes | None, str]:
    other = init_keys(cloud.keys.parent / "other-keys", force=True)[0]
    return signed_release(cloud.stored(2), "install", GROUP, None, load_private_key(other)), None, "bad signature"


def _unsigned_manifest(cloud: CloudSide) -> tuple[Release, bytes | None, str]:
    unsigned = cloud.stored(2).manifest.model_copy(update={"signature": None})
    rel = Release(action="install", group=GROUP, manifest=unsigned)
    return sign(rel, load_private_key(cloud.private_key)), None, "is not signed"


def _bad_model(cloud: CloudSide) -> tuple[Release, bytes | None, str]:
    return release(cloud, 3), None, "the gate needs 80%"


@pytest.mark.parametrize("make", [_tampered, _wrong_key, _unsigned_manifest, _bad_model],
                         ids=["tampered-artifact", "wrong-key", "unsigned-manifest", "disagreeing-model"])
def test_a_bad_release_is_refused_and_the_old_model_keeps_serving(
        make: Callable[[CloudSide], tuple[Release, bytes | None, str]], tmp_path: Path, broker: Mosquitto,
        cloud: CloudSide, channel: ReleaseChannel) -> None:
    with start_agent(tmp_path, broker, cloud, 1) as agent:
        rel, artifact, words = make(cloud)
        send(channel, cloud, rel, artifact)
        report = outcome(channel, "test-dev", lambda r: r["state"] == "rejected")
        assert words in report["reason"], report
        assert serving_version(agent) == "1"
        assert report["heartbeat"]["models"][TASK] == "1"
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, NAME) == [1]


def test_downgrade_is_refused_but_a_signed_rollback_goes_back(tmp_path: Path, broker: Mosquitto,
                                                              cloud: CloudSide, channel: ReleaseChannel) -> None:
    with start_agent(tmp_path, broker, cloud, 1, 2) as agent:
        assert serving_version(agent) == "2"
        send(channel, cloud, release(cloud, 1))
        report = outcome(channel, "test-dev", lambda r: r["state"] == "rejected")
        assert "downgrade" in report["reason"] and serving_version(agent) == "2"
        send(channel, cloud, release(cloud, 1, "rollback"))
        report = outcome(channel, "test-dev", lambda r: r["action"] == "rollback")
        assert report["state"] == "active" and "rolled back from v2" in report["reason"]
        assert serving_version(agent) == "1"
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, NAME) == [1]  # a restart stays on v1


def test_agent_killed_during_a_swap_restarts_with_a_valid_model(tmp_path: Path, broker: Mosquitto,
                                                                cloud: CloudSide, channel: ReleaseChannel) -> None:
    install_locally(cloud, tmp_path / "state" / "models", 1)
    doc = profile_doc(tmp_path, broker)
    doc["api"]["enabled"] = False
    doc["updates"] = {"enabled": True, "public_key_file": str(cloud.public_key), "group": GROUP,
                      "gate": {"min_samples": 0}}
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(doc))
    marker = tmp_path / "held"
    env = {**os.environ, HOLD_ENV: str(marker)}
    send(channel, cloud, release(cloud, 2))
    held = subprocess.Popen([FEDGE_AGENT, "run", "--profile", str(profile)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert channel.wait_until(lambda _hb: marker.exists() or held.poll() is not None, 60), "never staged"
        assert marker.exists(), held.stderr.read() if held.stderr else ""
        staged = tmp_path / "state" / "models" / ".staging" / TASK / NAME / "2" / "model.onnx"
        assert staged.is_file()  # downloaded and written, not yet renamed into the store
    finally:
        held.send_signal(signal.SIGKILL)
        held.wait(10)
    store = ModelStore(tmp_path / "state" / "models")
    assert store.versions(TASK, NAME) == [1]
    store.verified(TASK, NAME)  # what a restart loads is whole
    env.pop(HOLD_ENV)
    restarted = subprocess.Popen([FEDGE_AGENT, "run", "--profile", str(profile)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        report = outcome(channel, "test-dev", lambda r: r["state"] == "active")
        assert report["heartbeat"]["models"][TASK] == "2"
    finally:
        restarted.send_signal(signal.SIGKILL)
        restarted.wait(10)
    assert store.versions(TASK, NAME) == [1, 2]
    store.verified(TASK, NAME, 2)
