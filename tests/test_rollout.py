"""`fedge-cloud rollout`: canary first, then the group, or an automatic rollback; real broker, agents, registry."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from agent.agent import Agent
from agent.config.broker import TlsConfig
from agent.manifest import MANIFEST_FILE
from agent.mqtt_client import BrokerSettings, TlsFiles
from agent.protocol import Topics
from agent.updates import Release
from cloud.fleet.devices import DeviceListener
from cloud.local.mosquitto import Mosquitto, ServerTls
from cloud.registry import ModelState, Registry, open_registry
from cloud.releases.channel import ReleaseChannel
from cloud.releases.keys import load_private_key
from cloud.releases.rollout import Rollout, RolloutPlan, canary_verdict
from tests.conftest import ACL, USERS
from tests.mqtt_helpers import Inbox, client, subscribe
from tests.release_support import (
    NAME,
    TASK,
    CloudSide,
    follower_profile,
    install_locally,
    make_cloud,
    recent_traffic,
)
from tests.release_support import cloud as run_cloud
from tests.tls_certs import make_certs

GROUP, DEVICES = "fleet", ("dev-a", "dev-b")


@pytest.fixture
def cloud(tmp_path: Path) -> CloudSide:
    return make_cloud(tmp_path / "cloud")


@pytest.fixture
def fleet(tmp_path: Path, broker: Mosquitto, cloud: CloudSide) -> Iterator[list[Agent]]:
    """Two agents of one group running v1, with recent traffic labelled by the cloud."""
    agents = []
    try:
        for device in DEVICES:
            home = tmp_path / device
            install_locally(cloud, home / "state" / "models", 1)
            agent = Agent(follower_profile(home, broker, cloud, device=device, group=GROUP)).start()
            recent_traffic(agent, cloud)
            agents.append(agent)
        yield agents
    finally:
        for agent in agents:
            agent.stop()


@pytest.fixture
def registry(tmp_path: Path, broker: Mosquitto) -> Iterator[Registry]:
    """The registry, fed with the fleet's heartbeats by the coordinator's device listener."""
    url = tmp_path / "registry.db"
    with open_registry(url) as feed, DeviceListener(feed, broker.settings), open_registry(url) as reg:
        reg.add_model(TASK, NAME, 1, ModelState.ACTIVE)
        yield reg


def wait_for_group(broker: BrokerSettings, registry: Registry, devices: tuple[str, ...] = DEVICES) -> None:
    """Until the registry knows every device of the group from its heartbeats (woken by each heartbeat)."""
    with ReleaseChannel(broker, Topics()) as watch:
        known = watch.wait_until(lambda _hb: {d.device_id for d in registry.devices() if d.group == GROUP}
                                 >= set(devices), 30)
        assert known, registry.devices()


def rollout(cloud: CloudSide, registry: Registry, broker: Mosquitto, version: int) -> tuple[str, ReleaseChannel]:
    wait_for_group(broker.settings, registry)
    with ReleaseChannel(broker.settings, Topics()) as channel:
        result = Rollout(cloud.store, registry, channel, load_private_key(cloud.private_key)).run(
            RolloutPlan(TASK, NAME, version, GROUP, canary_fraction=0.5, health_timeout_s=60))
        assert result.canary == ["dev-a"]
        serving = str(result.previous if result.outcome == "rolled back" else version)
        action = "rollback" if result.outcome == "rolled back" else "install"
        everyone = channel.wait_until(lambda hb: all(
            hb.get(d, {}).get("models", {}).get(TASK) == serving
            and hb[d].get("updates", {}).get(TASK, {}).get("action") == action
            and hb[d]["updates"][TASK]["state"] == "active" for d in DEVICES), 30)
        assert everyone, channel._heartbeats
        return result.outcome, channel


def states(cloud: CloudSide, registry_file: Path) -> dict[int, str]:
    listed = run_cloud("models", "list", "--json", "--store", str(cloud.store.root), "--registry", str(registry_file))
    assert listed.returncode == 0, listed.stderr
    return {row["version"]: row["state"] for row in json.loads(listed.stdout)}


def test_a_healthy_canary_is_promoted_to_the_whole_group(tmp_path: Path, broker: Mosquitto, cloud: CloudSide,
                                                         fleet: list[Agent], registry: Registry) -> None:
    outcome, _ = rollout(cloud, registry, broker, 2)
    assert outcome == "promoted"
    assert [agent.heartbeat()["models"][TASK] for agent in fleet] == ["2", "2"]
    assert states(cloud, tmp_path / "registry.db") == {1: "retired", 2: "active", 3: None}


def test_a_failing_canary_is_rolled_back_automatically(tmp_path: Path, broker: Mosquitto, cloud: CloudSide,
                                                       fleet: list[Agent], registry: Registry) -> None:
    outcome, channel = rollout(cloud, registry, broker, 3)
    assert outcome == "rolled back"
    assert states(cloud, tmp_path / "registry.db") == {1: "active", 2: None, 3: "retired"}
    history = [e for e in registry.model_history(TASK, NAME) if e.version == 3]
    assert [e.state for e in history][-2:] == [ModelState.CANARY, ModelState.RETIRED]
    assert "dev-a refused v3" in history[-1].reason and "rolled back to v1" in history[-1].reason
    canary, other = (channel._heartbeats[d] for d in DEVICES)
    assert canary["models"][TASK] == "1" and other["models"][TASK] == "1"
    assert canary["updates"][TASK]["action"] == "rollback"
    assert "v3" not in json.dumps(other["updates"])  # the canary release was never for dev-b


def test_a_version_a_killed_rollout_left_at_canary_is_rolled_out_again(
        tmp_path: Path, broker: Mosquitto, cloud: CloudSide, registry: Registry) -> None:
    """A rollout killed mid-wait in a one-device group: the device runs v2, the registry says canary."""
    home = tmp_path / "dev-a"
    install_locally(cloud, home / "state" / "models", 2)
    registry.add_model(TASK, NAME, 2, ModelState.CANARY)
    agent = Agent(follower_profile(home, broker, cloud, device="dev-a", group=GROUP)).start()
    try:
        wait_for_group(broker.settings, registry, ("dev-a",))
        with ReleaseChannel(broker.settings, Topics()) as channel:
            result = Rollout(cloud.store, registry, channel, load_private_key(cloud.private_key)).run(
                RolloutPlan(TASK, NAME, 2, GROUP, health_timeout_s=60))
    finally:
        agent.stop()
    assert (result.outcome, result.canary) == ("promoted", ["dev-a"]), result.reason
    record = registry.model(TASK, NAME, 2)
    assert record is not None and record.state is ModelState.ACTIVE  # not stranded at canary


def unsign(cloud: CloudSide, version: int) -> None:
    """Strip a store version's signature, as a version added by hand and never published would be."""
    stored = cloud.stored(version)
    (stored.directory / MANIFEST_FILE).write_text(stored.manifest.model_copy(update={"signature": None}).to_json())


def retained_under(broker: Mosquitto, topic_filter: str) -> list[str]:
    """Topics with a retained message under ``topic_filter``: exact, not timed, because the broker sends a
    subscription's retained messages before a marker the same client publishes after its SUBACK."""
    marker = f"{topic_filter.rstrip('#/')}/zz-marker"
    with client(broker, "retained") as c:
        inbox = Inbox(c)
        subscribe(c, topic_filter)
        c.publish(marker, b"", qos=1).wait_for_publish(5)
        topics = []
        while (msg := inbox.get(10)).topic != marker:
            topics.append(msg.topic)
        return topics


def cli_rollout(cloud: CloudSide, registry_file: Path, broker_url: str, version: int, *more: str) -> Any:
    return run_cloud("rollout", "--task", TASK, "--name", NAME, "--version", str(version), "--group", GROUP,
                     "--canary", "50%", "--timeout", "60", "--broker", broker_url, "--store", str(cloud.store.root),
                     "--registry", str(registry_file), "--key", str(cloud.private_key), *more)


def test_a_rollout_that_could_not_roll_back_does_not_start(tmp_path: Path, broker: Mosquitto, cloud: CloudSide,
                                                           fleet: list[Agent], registry: Registry) -> None:
    unsign(cloud, 1)  # the version the group runs, and the only way back
    wait_for_group(broker.settings, registry)
    refused = cli_rollout(cloud, tmp_path / "registry.db", broker.url, 3)
    assert refused.returncode == 2, refused.stderr
    assert "cannot roll back to v1" in refused.stderr and "not signed" in refused.stderr
    assert "--first-release" in refused.stderr and "Traceback" not in refused.stderr
    assert registry.model(TASK, NAME, 3) is None  # never a canary
    assert retained_under(broker, f"{Topics().prefix}/models/#") == []  # neither release nor model file went out
    assert [agent.heartbeat()["models"][TASK] for agent in fleet] == ["1", "1"]


def test_a_failed_first_release_is_withdrawn(tmp_path: Path, broker: Mosquitto, cloud: CloudSide,
                                             fleet: list[Agent], registry: Registry) -> None:
    unsign(cloud, 1)
    wait_for_group(broker.settings, registry)
    with ReleaseChannel(broker.settings, Topics()) as channel:
        result = Rollout(cloud.store, registry, channel, load_private_key(cloud.private_key)).run(
            RolloutPlan(TASK, NAME, 3, GROUP, canary_fraction=0.5, health_timeout_s=60, first_release=True))
    assert (result.outcome, result.previous) == ("withdrawn", None)
    assert "dev-a refused v3" in result.reason
    event = registry.model_history(TASK, NAME)[-1]
    assert (event.version, event.state) == (3, ModelState.RETIRED)
    assert "withdrawn" in event.reason and "keep it" in event.reason
    release = Topics().release(TASK, GROUP)
    assert release not in retained_under(broker, f"{Topics().prefix}/models/#")


def test_the_channel_hears_heartbeats_again_after_the_broker_comes_back(broker: Mosquitto) -> None:
    topic = Topics().device_heartbeat("dev-x")
    with ReleaseChannel(broker.settings, Topics()) as channel:
        broker.restart()  # a clean session: the subscription is gone unless the channel makes it again
        with client(broker, "device") as device:  # retained, so it arrives whenever the channel subscribes
            device.publish(topic, json.dumps({"models": {TASK: "1"}}).encode(), qos=1, retain=True).wait_for_publish(5)
        assert channel.wait_until(lambda hb: "dev-x" in hb, 30), "no heartbeat after the reconnect"


def test_only_an_outcome_of_this_release_judges_the_canary(cloud: CloudSide) -> None:
    release = Release(action="install", group=GROUP, devices=["dev-a"], manifest=cloud.stored(2).manifest)
    issued = release.issued_at
    this = {"version": 2, "state": "active", "reason": "passed", "action": "install", "issued_at": issued.isoformat()}
    refused = {**this, "state": "rejected", "reason": "the gate needs 80%"}
    older = {**refused, "issued_at": datetime(2020, 1, 1, tzinfo=timezone.utc).isoformat()}
    unverified = {"last_unverified": {TASK: {"reason": "release is not signed"}}}

    def verdict(outcome: Any, **more: Any) -> tuple[bool, str] | None:
        return canary_verdict({"dev-a": {"updates": {TASK: outcome}, **more}}, ["dev-a"], release)

    assert verdict(this, **unverified) == (True, "v2 serves on dev-a")  # an unsigned message decides nothing
    assert verdict(older) is None  # a refusal of an earlier release: still waiting
    assert verdict({**this, "issued_at": issued.isoformat().replace("+00:00", "Z")}) == (True, "v2 serves on dev-a")
    healthy, why = verdict(refused)  # type: ignore[misc]
    assert not healthy and "dev-a refused v2: the gate needs 80%" in why
    for malformed in ("active", ["x"], {**this, "issued_at": "yesterday"}):  # a bad heartbeat: keep waiting
        assert verdict(malformed) is None
    assert canary_verdict({"dev-a": {"updates": "none"}}, ["dev-a"], release) is None
    claims = {"reason": "signature does not verify", "version": 2, "issued_at": issued.isoformat()}
    healthy, why = verdict(older, last_unverified={TASK: claims})  # type: ignore[misc]
    assert not healthy and "dev-a could not verify the release of v2: signature does not verify" in why
    assert verdict(older, last_unverified={TASK: {**claims, "issued_at": older["issued_at"]}}) is None  # another one
    assert verdict(older, last_unverified={TASK: {**claims, "version": 3}}) is None


def test_a_canary_that_cannot_verify_the_release_fails_the_rollout_at_once_with_its_reason(
        tmp_path: Path, broker: Mosquitto, fleet: list[Agent], registry: Registry) -> None:
    """The cloud signs with a key the devices do not trust: the canary's report ends the wait, not the timeout."""
    other = make_cloud(tmp_path / "other-cloud")  # the same models, signed with another key
    wait_for_group(broker.settings, registry)
    with ReleaseChannel(broker.settings, Topics()) as channel:
        result = Rollout(other.store, registry, channel, load_private_key(other.private_key)).run(
            RolloutPlan(TASK, NAME, 2, GROUP, canary_fraction=0.5, health_timeout_s=20))
    assert (result.outcome, result.canary) == ("rolled back", ["dev-a"])
    assert "dev-a could not verify the release of v2" in result.reason and "signature" in result.reason, result.reason
    assert [agent.heartbeat()["models"][TASK] for agent in fleet] == ["1", "1"]  # v1 served on throughout
    history = [e for e in registry.model_history(TASK, NAME) if e.version == 2]
    assert history[-1].state is ModelState.RETIRED and "could not verify" in history[-1].reason


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, TlsFiles]]:
    """TLS with client certificates, the fleet's passwords and ACL (tests/conftest.py), as deployed."""
    certs = make_certs(tmp_path / "certs")
    server = ServerTls(certs.ca_file, certs.server_cert, certs.server_key, require_certificate=True)
    with Mosquitto(tmp_path / "secure-broker", tls=server, users=USERS, acl=ACL) as running:
        yield running, TlsFiles(certs.ca_file, certs.client_cert, certs.client_key)


def test_a_rollout_reaches_a_tls_and_acl_broker_as_the_coordinator(tmp_path: Path, cloud: CloudSide,
                                                                   secure_broker: tuple[Mosquitto, TlsFiles],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    broker, tls = secure_broker
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for user, password in USERS.items():
        (secrets / user).write_text(password + "\n")
    agents = []
    try:
        for device in ("device-a", "device-b"):  # the fleet the ACL knows
            home = tmp_path / device
            install_locally(cloud, home / "state" / "models", 1)
            profile = follower_profile(home, broker, cloud, device=device, group=GROUP)
            secured = profile.broker.model_copy(update={
                "tls": TlsConfig(ca_file=str(tls.ca_file), cert_file=str(tls.cert_file), key_file=str(tls.key_file)),
                "username": device, "password_file": str(secrets / device)})
            agent = Agent(profile.model_copy(update={"broker": secured})).start()
            recent_traffic(agent, cloud)
            agents.append(agent)
        url = tmp_path / "registry.db"
        coordinator = replace(broker.settings, tls=tls, username="coordinator", password=USERS["coordinator"])
        with open_registry(url) as feed, DeviceListener(feed, coordinator), open_registry(url) as reg:
            reg.add_model(TASK, NAME, 1, ModelState.ACTIVE)
            wait_for_group(coordinator, reg, ("device-a", "device-b"))
            tls_flags = ["--ca-file", str(tls.ca_file), "--cert-file", str(tls.cert_file),
                         "--key-file", str(tls.key_file)]
            as_worker = cli_rollout(cloud, url, broker.url, 2, *tls_flags, "--username", "worker",
                                    "--password-file", str(secrets / "worker"))
            assert as_worker.returncode == 3 and "refused" in as_worker.stderr, as_worker.stderr
            assert "write access" in as_worker.stderr and "Traceback" not in as_worker.stderr
            monkeypatch.setenv("FEDGE_TEST_COORDINATOR_PW", USERS["coordinator"])
            done = cli_rollout(cloud, url, broker.url, 2, *tls_flags, "--username", "coordinator",
                               "--password-env", "FEDGE_TEST_COORDINATOR_PW", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["outcome"] == "promoted"
        assert states_of(url) == {1: "retired", 2: "active"}
    finally:
        for agent in agents:
            agent.stop()


def states_of(registry_file: Path) -> dict[int, str]:
    with open_registry(registry_file) as reg:
        return {m.version: m.state.value for m in reg.models(TASK)}


def test_rollout_and_keys_do_not_import_torch() -> None:
    """`keys`, the rollout and the release channel run on a coordinator box without the training stack."""
    code = "import sys, cloud.releases.keys, cloud.releases.rollout, cloud.releases.channel; print('torch' in sys.modules)"
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert ran.stdout.strip() == "False"
