"""Accuracy on labelled feedback: agent answers + labels -> heartbeat counts -> registry metrics -> serving."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.agent import Agent
from agent.model_store import ModelStore
from agent.protocol import InferRequest, Source, Topics
from cloud.fleet.devices import DeviceListener
from cloud.fleet.feedback import FEEDBACK_ACCURACY, FEEDBACK_N
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.registry import ModelRecord, Registry
from cloud.serving.served import FEEDBACK_MIN_N, accuracy_of
from tests.agent_support import make_profile, sample_inputs
from tests.mqtt_helpers import client, eventually
from tests.test_registry import Backend, backend  # noqa: F401  (the fixture: SQLite, and PostgreSQL when set)

PREFIX = "fedge/test"
TOPICS = Topics(PREFIX)
TASK, CLOUD = "mnist1d", "mnist1d-cloud"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory with a briefly trained edge model: what it predicts matters, not how well."""
    from cloud.zoo.pipeline import train_and_publish
    from cloud.zoo.tasks import DataOptions

    root = tmp_path_factory.mktemp("feedback")
    train_and_publish(ModelStore(root / "state" / "models"), TASK, "edge", epochs=1,
                      data=DataOptions(train_size=500, test_size=200), progress=False)
    return root


@pytest.fixture
def registry(backend: Backend) -> Iterator[Registry]:  # noqa: F811
    with backend.open() as opened:
        yield opened


@pytest.fixture
def listener(registry: Registry, broker: Mosquitto) -> Iterator[DeviceListener]:
    with DeviceListener(registry, broker.settings, PREFIX) as running:
        yield running


def beat(device: str, session: str, counts: dict[int, tuple[int, int]], name: str = CLOUD) -> dict[str, Any]:
    """A heartbeat as an agent sends it, with feedback counts version -> (n, correct)."""
    return {"device_id": device, "kind": "test-box", "models": {TASK: "1"},
            "feedback": {"session": session, "tasks": {TASK: {name: {
                str(v): {"n": n, "correct": c} for v, (n, c) in counts.items()}}}}}


def publish(broker: Mosquitto, device: str, body: dict[str, Any] | bytes) -> None:
    with client(broker, f"dev-{device}") as c:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        c.publish(TOPICS.device_heartbeat(device), payload, qos=1).wait_for_publish(5)


def metrics(registry: Registry, name: str = CLOUD, version: int = 1) -> dict[str, float]:
    record: ModelRecord | None = registry.model(TASK, name, version)
    return record.metrics if record is not None else {}


def reaches(registry: Registry, n: int, correct: int, name: str = CLOUD, version: int = 1) -> bool:
    """Whether the registry shows ``correct``/``n`` for the version (the listener writes on its own thread)."""
    m = metrics(registry, name, version)
    return m.get(FEEDBACK_N) == n and m.get(FEEDBACK_ACCURACY) == pytest.approx(correct / n)


def test_agent_counts_labelled_answers_per_model_version_and_the_registry_learns_them(
        zoo: Path, broker: Mosquitto, listener: DeviceListener, registry: Registry) -> None:
    x, y = sample_inputs(30, seed=3)
    with Agent(make_profile(zoo, None, api_port=free_port())) as agent:
        replies = [agent.infer(InferRequest(TASK, {"input": x[i:i + 1]})) for i in range(30)]
        batch = agent.infer(InferRequest(TASK, {"input": x[:2]}))  # one label cannot judge two rows
        assert all(r.source is Source.EDGE for r in replies)
        right = [int(np.argmax(r.outputs["probabilities"][0])) == y[i] for i, r in enumerate(replies)]
        for i, reply in enumerate(replies[:20]):
            assert agent.feedback(reply.request_id, int(y[i]))
        assert not agent.feedback(replies[0].request_id, int(y[0]))  # counted once
        assert not agent.feedback("never-answered", 1) and not agent.feedback(batch.request_id, 1)
        for label in (10, -1):  # ten classes: labels 0..9
            with pytest.raises(ValueError, match="not a class"):
                agent.feedback(replies[25].request_id, label)
        heartbeat = agent.heartbeat()
    section = heartbeat["feedback"]
    name, version = replies[0].model_name, replies[0].model_version
    assert section["tasks"] == {TASK: {name: {version: {"n": 20, "correct": sum(right[:20])}}}}
    assert isinstance(section["session"], str) and section["session"]
    registry.add_model(TASK, name, int(version))  # devices never create models: counts wait for a known version
    publish(broker, "edge-1", {**heartbeat, "device_id": "edge-1"})
    assert eventually(lambda: reaches(registry, 20, sum(right[:20]), name, int(version)))


def test_recent_answers_are_bounded(zoo: Path) -> None:
    from agent.feedback import FeedbackTally

    tally = FeedbackTally(capacity=3)
    x, _ = sample_inputs(5)
    with Agent(make_profile(zoo, None, api_port=free_port())) as agent:
        replies = [agent.infer(InferRequest(TASK, {"input": x[i:i + 1]})) for i in range(5)]
    for reply in replies:
        tally.answered(TASK, reply)
    assert not tally.feedback(replies[2].request_id, 0, task="digits")  # another task's answer: not this one's
    assert [tally.feedback(r.request_id, 0, task=TASK) for r in replies] == [False, False, True, True, True]


def test_two_devices_sum_and_a_restart_neither_loses_nor_double_counts(
        broker: Mosquitto, listener: DeviceListener, registry: Registry) -> None:
    registry.add_model(TASK, CLOUD, 1)
    publish(broker, "a", beat("a", "s1", {1: (10, 8)}))
    publish(broker, "b", beat("b", "t1", {1: (30, 15)}))
    assert eventually(lambda: reaches(registry, 40, 23))
    publish(broker, "a", beat("a", "s1", {1: (12, 9)}))  # more feedback in the same run: replaces
    publish(broker, "a", beat("a", "s1", {1: (12, 9)}))  # a repeated heartbeat: changes nothing
    assert eventually(lambda: reaches(registry, 42, 24))
    publish(broker, "a", beat("a", "s2", {1: (3, 3)}))  # restarted: a new session, counting from zero
    assert eventually(lambda: reaches(registry, 45, 27))
    publish(broker, "a", beat("a", "s1", {1: (11, 9)}))  # a late heartbeat of the old run: older counts
    publish(broker, "b", beat("b", "t1", {1: (30, 15), 2: (4, 4)}))  # b also labels answers of v2 now
    publish(broker, "b", beat("b", "t1", {1: (31, 16), 2: (4, 4)}))
    assert eventually(lambda: reaches(registry, 46, 28))
    assert registry.model(TASK, CLOUD, 2) is None  # a version the cloud never registered is not created
    registry.add_model(TASK, CLOUD, 2)
    publish(broker, "b", beat("b", "t1", {1: (31, 16), 2: (5, 5)}))  # the counts kept waiting for it
    assert eventually(lambda: reaches(registry, 5, 5, version=2))


def test_garbage_feedback_is_ignored_and_the_heartbeat_and_listener_go_on(
        broker: Mosquitto, listener: DeviceListener, registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloud.fleet.devices")
    garbage: list[Any] = [
        "lots", {"tasks": {}}, {"session": "s", "tasks": [1]},
        {"session": "s", "tasks": {TASK: {CLOUD: {"1": {"n": 2, "correct": 5}}}}},
        {"session": "s", "tasks": {TASK: {CLOUD: {"1": {"n": -1, "correct": 0}}}}},
        {"session": "s", "tasks": {TASK: {CLOUD: {"1": {"n": True, "correct": 0}}}}},
        {"session": "s", "tasks": {TASK: {CLOUD: {"1": {"n": 2}}}}},
    ]
    for i, section in enumerate(garbage):
        publish(broker, f"bad-{i}", {"kind": "test-box", "feedback": section})
    publish(broker, "local", beat("local", "s", {1: (5, 5)}) | {"feedback": {"session": "s", "tasks": {
        TASK: {"my-file": {"local": {"n": 5, "correct": 5}}}}}})  # a local model file: no registry version
    publish(broker, "huge", beat("huge", "h", {1: (2**40, 0)}))  # past any database integer: refused
    registry.add_model(TASK, CLOUD, 1)
    publish(broker, "good", beat("good", "g", {1: (60, 57)}))
    assert eventually(lambda: reaches(registry, 60, 57))
    assert eventually(lambda: {d.device_id for d in registry.devices()} >= {f"bad-{i}" for i in range(len(garbage))})
    assert [m.name for m in registry.models()] == [CLOUD]
    ignored = [r.getMessage() for r in caplog.records if "ignored the feedback" in r.getMessage()]
    assert len(ignored) == len(garbage) + 1, ignored
    assert any("more than n" in m for m in ignored) and any("session" in m for m in ignored)


def test_serving_ranks_by_feedback_accuracy_once_enough_answers_are_labelled() -> None:
    manifest = {"test_accuracy": 0.9}
    assert accuracy_of(manifest) == 0.9
    assert accuracy_of(manifest, {FEEDBACK_ACCURACY: 0.5, FEEDBACK_N: FEEDBACK_MIN_N - 1}) == 0.9
    assert accuracy_of(manifest, {FEEDBACK_ACCURACY: 0.5, FEEDBACK_N: FEEDBACK_MIN_N}) == 0.5
    assert accuracy_of({}, {"latency_ms_b1": 2.0}) is None
