"""`fedge-cloud rollout`: canary first, then the group, or an automatic rollback; real broker, agents, registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.agent import Agent
from agent.protocol import Topics
from cloud.devices import DeviceListener
from cloud.keys import load_private_key
from cloud.mosquitto import Mosquitto
from cloud.registry import ModelState, Registry, open_registry
from cloud.release_channel import ReleaseChannel
from cloud.rollout import Rollout, RolloutPlan
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
    with open_registry(url) as feed, DeviceListener(feed, broker.host, broker.port), open_registry(url) as reg:
        reg.add_model(TASK, NAME, 1, ModelState.ACTIVE)
        yield reg


def rollout(cloud: CloudSide, registry: Registry, broker: Mosquitto, version: int) -> tuple[str, ReleaseChannel]:
    with ReleaseChannel(broker.host, broker.port, Topics()) as channel:
        known = channel.wait_until(lambda _hb: {d.device_id for d in registry.devices() if d.group == GROUP}
                                   >= set(DEVICES), 30)
        assert known, registry.devices()
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
