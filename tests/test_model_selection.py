"""Several cloud models per task: which versions are served, and which model answers each request."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.confidence import fuse, softmax
from agent.model_store import ModelStore
from agent.protocol import (
    ErrorCode,
    ErrorReply,
    InferReply,
    InferRequest,
    Source,
    Topics,
    decode_reply,
    encode_request,
)
from cloud.local.mosquitto import Mosquitto
from cloud.registry import ModelState, open_registry
from cloud.serving.latency import LatencyEwma
from cloud.serving.selection import Reason, UnknownModel, choose
from cloud.serving.served import served_models
from cloud.serving.worker import Worker, WorkerSettings, registry_at
from tests.agent_support import sample_inputs
from tests.mqtt_helpers import Inbox, client, subscribe
from tests.serving_support import (
    LARGE,
    SMALL,
    accuracies,
    running_worker,
    two_model_store,
)

TOPICS = Topics()
MAX_BATCH = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return two_model_store(tmp_path_factory.mktemp("selection") / "models")


@pytest.fixture
def worker(store: ModelStore, broker: Mosquitto) -> Iterator[Worker]:
    with running_worker(WorkerSettings(store=store.root, broker=broker.settings, worker_id="sel",
                                       max_batch=MAX_BATCH, status_interval_s=0.2), broker) as w:
        yield w


def ask(broker: Mosquitto, request: InferRequest) -> InferReply | ErrorReply:
    with client(broker, "asker") as asker:
        inbox = Inbox(asker)
        subscribe(asker, "test/replies")
        payload, props = encode_request(request, response_topic="test/replies")
        asker.publish(TOPICS.infer(request.task), payload, qos=1, properties=props)
        msg = inbox.get(timeout=20)
        return decode_reply(msg.payload, msg.properties)


def models_of(worker: Worker) -> dict[str, Any]:
    return {m.name: m for m in worker.models["mnist1d"]}


def test_latency_estimate_interpolates_between_measured_batch_sizes() -> None:
    ewma = LatencyEwma(alpha=0.5)
    assert ewma.expected(8) == 0.0
    ewma.observe(1, 2.0)
    ewma.observe(5, 10.0)
    assert ewma.expected(3) == pytest.approx(6.0)
    assert ewma.expected(10) == pytest.approx(20.0)  # beyond the largest: in proportion
    ewma.observe(1, 4.0)
    assert ewma.expected(1) == pytest.approx(3.0)
    assert ewma.snapshot() == {"1": 3.0, "5": 10.0}


def test_every_cloud_name_is_served_at_its_newest_verified_version(store: ModelStore) -> None:
    served = {s.manifest.name: s.manifest.version for s in served_models(store)["mnist1d"]}
    assert served == {LARGE: 2, SMALL: 1}  # mnist1d-edge is not a cloud model
    assert {s.manifest.name for s in served_models(store, only={"mnist1d": [SMALL]})["mnist1d"]} == {SMALL}


def test_a_registry_decides_which_versions_are_served(store: ModelStore, tmp_path: Path) -> None:
    with open_registry(tmp_path / "registry.db") as registry:
        registry.add_model("mnist1d", "mnist1d-edge", 1, ModelState.ACTIVE)  # an edge rollout: never served here
        served = {(s.manifest.name, s.manifest.version) for s in served_models(store, registry)["mnist1d"]}
        assert served == {(LARGE, 2), (SMALL, 1)}  # no active cloud version yet: the store's newest
        registry.add_model("mnist1d", LARGE, 1, ModelState.ACTIVE)
        registry.add_model("mnist1d", LARGE, 2, ModelState.STAGED)
        registry.add_model("mnist1d", SMALL, 1, ModelState.ACTIVE)
        served = {(s.manifest.name, s.manifest.version) for s in served_models(store, registry)["mnist1d"]}
        assert served == {(LARGE, 1), (SMALL, 1)}
        assert [s.manifest.name for s in served_models(store, registry, {"mnist1d": [SMALL]})["mnist1d"]] == [SMALL]
        registry.set_model_state("mnist1d", SMALL, 1, ModelState.RETIRED)
        assert [s.manifest.name for s in served_models(store, registry)["mnist1d"]] == [LARGE]
    with registry_at(f"sqlite:///{tmp_path / 'registry.db'}") as by_url:
        assert [(s.manifest.name, s.manifest.version) for s in served_models(store, by_url)["mnist1d"]] == [(LARGE, 1)]


def test_selection_weighs_accuracy_against_queue_and_deadline(worker: Worker) -> None:
    models = worker.models["mnist1d"]
    large, small = models_of(worker)[LARGE], models_of(worker)[SMALL]
    assert accuracies(ModelStore(worker.settings.store)) == {LARGE: large.accuracy, SMALL: small.accuracy}
    assert large.accuracy > small.accuracy and large.latency.expected(1) > 10 * small.latency.expected(1)
    loose = choose(models, None, 10_000, {}, MAX_BATCH)
    assert (loose.model.name, loose.reason) == (LARGE, Reason.FITS)
    tight = choose(models, None, large.latency.expected(1) / 2, {}, MAX_BATCH)
    assert (tight.model.name, tight.reason) == (SMALL, Reason.FITS)
    # a deadline the large model meets on an idle worker, but not behind a full batch of large-model work
    full_batch = large.latency.expected(MAX_BATCH)
    deadline = full_batch + large.latency.expected(1) / 2
    assert choose(models, None, deadline, {}, MAX_BATCH).model.name == LARGE
    behind = choose(models, None, deadline, {LARGE: MAX_BATCH}, MAX_BATCH)
    assert (behind.model.name, behind.reason) == (SMALL, Reason.FITS)
    assert behind.expected_ms == pytest.approx(full_batch + small.latency.expected(1))
    # a request joining its model's queued jobs is counted once: in their batch, not after it
    joining = choose(models, LARGE, 10_000, {LARGE: 1, SMALL: 2}, MAX_BATCH)
    assert joining.expected_ms == pytest.approx(large.latency.expected(2) + small.latency.expected(2))
    next_batch = choose(models, LARGE, 10_000, {LARGE: MAX_BATCH}, MAX_BATCH)
    assert next_batch.expected_ms == pytest.approx(full_batch + large.latency.expected(1))
    hopeless = choose(models, None, 0, {}, MAX_BATCH)
    assert (hopeless.model.name, hopeless.reason) == (SMALL, Reason.FASTEST)
    with pytest.raises(UnknownModel, match=LARGE):
        choose(models, "mnist1d-huge", 10_000, {}, MAX_BATCH)


def test_small_model_under_a_tight_deadline_large_under_a_loose_one(worker: Worker, broker: Mosquitto) -> None:
    large, small = models_of(worker)[LARGE], models_of(worker)[SMALL]
    tight_ms = math.floor(large.latency.expected(1) * 0.8)
    assert small.latency.expected(1) < tight_ms, "the fixture's models are not far enough apart"
    x, _ = sample_inputs(2)
    quick = ask(broker, InferRequest("mnist1d", {"input": x[:1]}, timeout_ms=tight_ms))
    assert isinstance(quick, InferReply) and quick.model_name == SMALL
    careful = ask(broker, InferRequest("mnist1d", {"input": x[1:]}, timeout_ms=10_000))
    assert isinstance(careful, InferReply) and (careful.model_name, careful.model_version) == (LARGE, "2")
    decisions = worker.status()["tasks"]["mnist1d"]["decisions"]
    assert decisions == {SMALL: {"fits": 1}, LARGE: {"fits": 1}}


def test_a_request_naming_a_model_gets_it_and_an_unknown_name_gets_a_clear_error(
        worker: Worker, broker: Mosquitto) -> None:
    x, _ = sample_inputs(1)
    named = ask(broker, InferRequest("mnist1d", {"input": x}, timeout_ms=10_000, model=SMALL))  # not the default
    assert isinstance(named, InferReply) and named.model_name == SMALL and named.source is Source.CLOUD
    short = ask(broker, InferRequest("mnist1d", {"input": x}, timeout_ms=10_000, model="cloud"))  # no "<task>-"
    assert isinstance(short, InferReply) and short.model_name == LARGE
    assert worker.status()["tasks"]["mnist1d"]["decisions"] == {SMALL: {"named": 1}, LARGE: {"named": 1}}
    unknown = ask(broker, InferRequest("mnist1d", {"input": x}, model="mnist1d-huge"))
    assert isinstance(unknown, ErrorReply) and unknown.code is ErrorCode.BAD_REQUEST
    assert "mnist1d-huge" in unknown.message and LARGE in unknown.message and SMALL in unknown.message
    status = worker.status()
    assert status["errors"] == 1


def test_fusion_replies_with_the_fused_distribution(worker: Worker, broker: Mosquitto) -> None:
    x, _ = sample_inputs(3)
    edge = softmax(np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32))
    reply = ask(broker, InferRequest("mnist1d", {"input": x, "edge_probs": edge}, model=SMALL, fusion=0.7))
    assert isinstance(reply, InferReply) and reply.source is Source.FUSED
    small = models_of(worker)[SMALL]
    cloud = small.scores(small.session.run(None, {small.inputs[0].name: x})[0])
    np.testing.assert_allclose(reply.outputs["probabilities"], fuse(edge, cloud, 0.7), atol=1e-5)
    assert not np.allclose(reply.outputs["probabilities"], cloud, atol=1e-3)  # the edge's view changed it
    missing = ask(broker, InferRequest("mnist1d", {"input": x}, fusion=0.7))
    assert isinstance(missing, ErrorReply) and "edge_probs" in missing.message
    wrong_rows = ask(broker, InferRequest("mnist1d", {"input": x, "edge_probs": edge[:2]}, fusion=0.7))
    assert isinstance(wrong_rows, ErrorReply) and wrong_rows.code is ErrorCode.SHAPE_MISMATCH
    wrong_classes = ask(broker, InferRequest("mnist1d", {"input": x, "edge_probs": edge[:, :4]}, model=SMALL,
                                             fusion=0.7))
    assert isinstance(wrong_classes, ErrorReply) and wrong_classes.code is ErrorCode.SHAPE_MISMATCH
