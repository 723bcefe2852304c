"""The agent's side of a release, with a real broker, real ONNX Runtime sessions and real files."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent.agent import Agent
from agent.model_store import ModelStore
from agent.mqtt_client import BrokerSettings
from agent.profile.schema import Profile
from agent.profile.updates import ShadowGate
from agent.protocol import InferReply, InferRequest, Topics
from agent.samples import SampleStore
from agent.signing import KeyFileError
from agent.updates import Release
from agent.updates.artifact import ArtifactWait
from agent.updates.shadow import judge
from agent.updates.updater import Updater
from agent.uplink import Uplink
from cloud.local.mosquitto import Mosquitto
from cloud.releases.channel import Heartbeats, ReleaseChannel
from cloud.releases.keys import init_keys, load_private_key
from cloud.releases.rollout import signed_release
from cloud.releases.signing import sign
from tests.agent_support import profile_doc
from tests.held_updates import hold_swaps
from tests.release_support import (
    FEATURES,
    NAME,
    TASK,
    CloudSide,
    add_signed_version,
    follower_profile,
    install_locally,
    linear_onnx,
    make_cloud,
    recent_traffic,
)
from tests.responder import responding

FEDGE_AGENT = str(Path(sys.executable).with_name("fedge-agent"))
REPO = Path(__file__).resolve().parent.parent
GROUP = "lab"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> CloudSide:
    return make_cloud(tmp_path_factory.mktemp("cloud"))


@pytest.fixture
def channel(broker: Mosquitto) -> Iterator[ReleaseChannel]:
    with ReleaseChannel(broker.settings, Topics()) as c:
        yield c


def follower(tmp: Path, broker: Mosquitto, cloud: CloudSide, **updates: Any) -> Profile:
    """``follower_profile`` for group GROUP with ``updates`` settings changed."""
    profile = follower_profile(tmp, broker, cloud, group=GROUP)
    return profile.model_copy(update={"updates": profile.updates.model_copy(update=updates)})


@contextmanager
def start_agent(tmp: Path, broker: Mosquitto, cloud: CloudSide, *versions: int, **updates: Any) -> Iterator[Agent]:
    """An agent following group GROUP with ``versions`` installed and recent traffic the cloud labelled."""
    install_locally(cloud, tmp / "state" / "models", *versions)
    with Agent(follower(tmp, broker, cloud, **updates)) as agent:
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
        channel._publish(channel.topics.artifact(TASK, NAME, m.version), artifact)
    channel.publish_release(rel)


def outcome(channel: ReleaseChannel, device: str, done: Callable[[dict[str, Any]], bool],
            field: str = "updates") -> dict[str, Any]:
    """The device's report on the task in heartbeat ``field``, once ``done`` holds for it."""
    found: dict[str, Any] = {}

    def check(heartbeats: Heartbeats) -> bool:
        beat = heartbeats.get(device, {})
        report = (beat.get(field) or {}).get(TASK)
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


def _unsigned_manifest(cloud: CloudSide) -> tuple[Release, bytes | None, str]:
    unsigned = cloud.stored(2).manifest.model_copy(update={"signature": None})
    rel = Release(action="install", group=GROUP, manifest=unsigned)
    return sign(rel, load_private_key(cloud.private_key)), None, "is not signed"


def _bad_model(cloud: CloudSide) -> tuple[Release, bytes | None, str]:
    return release(cloud, 3), None, "the gate needs 80%"


@pytest.mark.parametrize("make", [_tampered, _unsigned_manifest, _bad_model],
                         ids=["tampered-artifact", "unsigned-manifest", "disagreeing-model"])
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


def test_the_shadow_gate_lets_a_release_fix_the_old_models_mistakes_but_not_undo_its_right_answers() -> None:
    """The sample store keeps mostly hard cases; a better model changes the old one's wrong answers there."""
    gate = ShadowGate()  # keep 80 % of the old model's right answers; lose at most 5 points of accuracy
    labels = np.arange(100) % 10
    old = labels.copy()
    old[::2] = (labels[::2] + 1) % 10  # the old model is right on half the kept samples
    fixes = labels.copy()  # right everywhere: it differs from the old model on 50 % of the samples
    assert judge(old, fixes, labels, gate).passed
    undoes = fixes.copy()
    undoes[1:40:2] = (labels[1:40:2] + 3) % 10  # 20 of the old model's 50 right answers turned wrong
    verdict = judge(old, undoes, labels, gate)
    assert not verdict.passed and "keeps the running model's answer on 60% of the 50" in verdict.reason, verdict
    worse = old.copy()
    worse[1:16:2] = (labels[1:16:2] + 3) % 10  # keeps 42 of 50 right answers (84 %), accuracy 50 % -> 42 %
    verdict = judge(old, worse, labels, gate)
    assert not verdict.passed and "more than 5% worse" in verdict.reason, verdict


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
    kept = SampleStore(tmp_path / "state" / "samples.db")  # what the device had kept before the release came
    rows = np.random.default_rng(2).normal(size=(20, FEATURES)).astype(np.float32)
    for i, row in enumerate(rows):
        kept.add(f"kept-{i}", TASK, row[None], np.full((1, 10), 0.1, np.float32))
    kept.close()
    send(channel, cloud, release(cloud, 2))
    # the agent pauses before promoting, and writes nothing for it
    held = subprocess.Popen([sys.executable, "-m", "tests.held_updates", "run", "--profile", str(profile)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    staged = tmp_path / "state" / "models" / ".staging" / TASK / NAME / "2" / "model.onnx"
    try:
        assert channel.wait_until(lambda _hb: staged.is_file() or held.poll() is not None, 60), "never staged"
        assert staged.is_file(), held.stderr.read() if held.stderr else ""  # written, not yet in the store
    finally:
        held.send_signal(signal.SIGKILL)
        held.wait(10)
    store = ModelStore(tmp_path / "state" / "models")
    assert store.versions(TASK, NAME) == [1]
    store.verified(TASK, NAME)  # what a restart loads is whole
    after = SampleStore.reader(tmp_path / "state" / "samples.db")
    assert after.count(TASK) == 20 and np.array_equal(after.training_set(TASK).x, rows)  # the samples are intact
    after.close()
    restarted = subprocess.Popen([FEDGE_AGENT, "run", "--profile", str(profile)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        report = outcome(channel, "test-dev", lambda r: r["state"] == "active")
        assert report["heartbeat"]["models"][TASK] == "2"
    finally:
        restarted.send_signal(signal.SIGKILL)
        restarted.wait(10)
    assert store.versions(TASK, NAME) == [1, 2]
    store.verified(TASK, NAME, 2)


def _batchers_alive() -> int:
    return sum(t.name == f"fedge-batch-{TASK}" and t.is_alive() for t in threading.enumerate())


def test_a_second_delivery_of_the_model_file_is_ignored_and_offloading_goes_on(
        broker: Mosquitto, cloud: CloudSide, channel: ReleaseChannel, caplog: pytest.LogCaptureFixture) -> None:
    connection = Uplink("dev-x", Topics(), BrokerSettings(broker.host, broker.port))
    connection.start()
    try:
        assert connection.wait_connected(10)
        channel.publish_artifact(cloud.stored(2))
        wait = ArtifactWait(Topics().artifact(TASK, NAME, 2))
        connection.subscribe(wait.topic, wait.deliver)
        assert wait.result(timeout=10) == cloud.stored(2).model_path.read_bytes()
        channel.publish_artifact(cloud.stored(2))  # a redelivery while the handler is still subscribed
        with responding(broker, lambda x: x + 1):  # its reply comes after the redelivery on the same connection
            _, reply = connection.submit(InferRequest(TASK, {"input": np.ones((1, 40), np.float32)}, timeout_ms=5000))
            assert isinstance(reply.result(timeout=10), InferReply)
    finally:
        connection.stop()
    assert not [r for r in caplog.records if r.name.startswith("agent.") and r.levelno >= logging.ERROR], caplog.text


def test_a_release_that_does_not_verify_never_changes_a_verified_outcome(
        tmp_path: Path, broker: Mosquitto, cloud: CloudSide, channel: ReleaseChannel) -> None:
    with start_agent(tmp_path, broker, cloud, 1) as agent:
        good = release(cloud, 2)
        send(channel, cloud, good)
        assert outcome(channel, "test-dev", lambda r: r["issued_at"] == good.issued_at.isoformat())["state"] == "active"
        other = init_keys(tmp_path / "other-keys")[0]
        send(channel, cloud, signed_release(cloud.stored(3), "install", GROUP, None, load_private_key(other)))
        report = outcome(channel, "test-dev", lambda r: "bad signature" in r["reason"], field="last_unverified")
        verified = report["heartbeat"]["updates"][TASK]
        assert (verified["state"], verified["issued_at"]) == ("active", good.issued_at.isoformat())
        assert serving_version(agent) == "2"
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, NAME) == [1, 2]


def test_a_release_whose_file_does_not_come_is_retried_and_survives_a_stop(
        tmp_path: Path, broker: Mosquitto, cloud: CloudSide, channel: ReleaseChannel) -> None:
    rel = release(cloud, 2)
    with start_agent(tmp_path, broker, cloud, 1, artifact_timeout_s=1, retry_after_s=1) as agent:
        channel.publish_release(rel)  # no model file yet
        report = outcome(channel, "test-dev", lambda r: "no model file" in r["reason"], field="last_retrying")
        assert report["issued_at"] == rel.issued_at.isoformat()
        assert TASK not in report["heartbeat"]["updates"]  # not decided: nothing blocks a later attempt
        assert agent.updater is not None
        # Tried again by itself; stop while that download waits.
        assert channel.wait_until(lambda _hb: agent.updater is not None and agent.updater._download is not None, 30)
    record = tmp_path / "state" / "updates.json"
    assert not record.exists() or rel.issued_at.isoformat() not in record.read_text()
    channel.publish_artifact(cloud.stored(2))
    with Agent(follower(tmp_path, broker, cloud)) as restarted:
        report = outcome(channel, "test-dev", lambda r: r["issued_at"] == rel.issued_at.isoformat())
        assert report["state"] == "active" and serving_version(restarted) == "2"


def test_a_model_that_fails_on_recent_traffic_is_refused_and_leaves_nothing_running(
        tmp_path: Path, broker: Mosquitto, channel: ReleaseChannel) -> None:
    own = make_cloud(tmp_path / "cloud")
    narrow = add_signed_version(own, linear_onnx(tmp_path / "narrow.onnx", np.ones((20, 10)), features=20))
    with start_agent(tmp_path, broker, own, 1) as agent:
        send(channel, own, release(own, narrow))
        report = outcome(channel, "test-dev", lambda r: r["state"] == "rejected")
        assert f"v{narrow} fails on recent traffic" in report["reason"], report
        assert _batchers_alive() == 1 and serving_version(agent) == "1"
        assert not (tmp_path / "state" / "models" / ".staging" / TASK / NAME / str(narrow)).exists()


def test_a_stop_while_a_release_waits_to_be_promoted_swaps_nothing_and_leaks_nothing(
        tmp_path: Path, broker: Mosquitto, cloud: CloudSide, channel: ReleaseChannel,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Updater, "_swap", Updater._swap)  # restored after the test, whatever happens
    hold_swaps()
    staged = tmp_path / "state" / "models" / ".staging" / TASK / NAME / "2"
    with start_agent(tmp_path, broker, cloud, 1):
        send(channel, cloud, release(cloud, 2))
        assert channel.wait_until(lambda _hb: staged.is_dir(), 30), "never staged"
    assert _batchers_alive() == 0
    assert not [t for t in threading.enumerate() if t.name == "fedge-updates" and t.is_alive()]
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, NAME) == [1] and not staged.exists()


def test_a_manifest_naming_a_file_outside_the_store_is_refused(
        tmp_path: Path, broker: Mosquitto, cloud: CloudSide, channel: ReleaseChannel) -> None:
    key = load_private_key(cloud.private_key)
    escaping = cloud.stored(2).manifest.model_copy(update={"file": "../../../../../../evil.onnx"})  # unvalidated
    rel = sign(Release(action="install", group=GROUP, manifest=sign(escaping, key)), key)
    with start_agent(tmp_path, broker, cloud, 1) as agent:
        send(channel, cloud, rel)
        report = outcome(channel, "test-dev", lambda r: "file" in r["reason"], field="last_unverified")
        assert "manifest.file" in report["reason"], report
        assert serving_version(agent) == "1"
    assert not list(tmp_path.rglob("evil.onnx"))


def test_a_lost_record_of_releases_refuses_a_replayed_rollback(
        tmp_path: Path, broker: Mosquitto, cloud: CloudSide, channel: ReleaseChannel) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "updates.json").write_text("{not json")
    with start_agent(tmp_path, broker, cloud, 1, 2) as agent:
        send(channel, cloud, release(cloud, 1, "rollback"))
        report = outcome(channel, "test-dev", lambda r: r["state"] == "rejected")
        assert "record of handled releases was lost" in report["reason"], report
        assert serving_version(agent) == "2"
    assert (tmp_path / "state" / "updates.json.corrupt").read_text() == "{not json"


def test_a_bad_release_key_stops_the_agent_before_it_connects(tmp_path: Path, broker: Mosquitto,
                                                              cloud: CloudSide) -> None:
    install_locally(cloud, tmp_path / "state" / "models", 1)
    (tmp_path / "bad.pub").write_text("not a key")
    before = set(threading.enumerate())
    with pytest.raises(KeyFileError, match=r"bad\.pub: not a PEM public key"):
        Agent(follower(tmp_path, broker, cloud, public_key_file=str(tmp_path / "bad.pub"))).start()
    assert {t for t in threading.enumerate() if t.is_alive()} <= before
