"""The edge agent end to end: real models, a real broker, a cloud stand-in speaking the protocol."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.agent import Agent
from agent.confidence import confidence, softmax
from agent.model_store import ModelStore
from agent.policy import OffloadBudget
from agent.profile import parse_profile
from agent.protocol import ErrorCode, InferRequest, ProtocolError, Source, Topics
from agent.runtime import check_precision
from agent.session import open_session
from cloud.local.mosquitto import Mosquitto, free_port
from tests.agent_support import cloud_answer, make_profile, profile_doc, sample_inputs, train_small_zoo
from tests.http_support import http_call
from tests.mqtt_helpers import Inbox, client, eventually, subscribe
from tests.responder import responding

# Audits off: these tests count what reaches the cloud (the audit test turns them on)
THRESHOLD = {"mode": "threshold", "metric": "max_prob", "threshold": 0.8, "default_deadline_ms": 2000, "audit_rate": 0.0}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory whose model store holds small trained MNIST-1D models."""
    root = tmp_path_factory.mktemp("agent")
    train_small_zoo(root / "state" / "models")
    return root


def request(x: np.ndarray, **kw: Any) -> InferRequest:
    return InferRequest("mnist1d", {"input": x}, **kw)


@pytest.fixture
def agent_with_cloud(zoo: Path, broker: Mosquitto) -> Iterator[tuple[Agent, Any]]:
    store = ModelStore(zoo / "state" / "models")
    with responding(broker, cloud_answer(store)) as cloud, \
            Agent(make_profile(zoo, broker, offload=THRESHOLD, api_port=free_port())) as agent:
        assert agent.uplink is not None and agent.uplink.wait_connected(5)
        deadline = time.monotonic() + 5
        while agent.uplink.cloud_status is None and time.monotonic() < deadline:
            time.sleep(0.01)
        yield agent, cloud


def edge_confidence(zoo: Path, x: np.ndarray) -> np.ndarray:
    session = open_session(ModelStore(zoo / "state" / "models").get("mnist1d", "mnist1d-edge").model_path)
    return confidence(softmax(session.run(None, {"input": x})[0]), "max_prob")


def test_confident_stays_local_and_unconfident_goes_to_the_cloud(zoo: Path, agent_with_cloud: tuple[Agent, Any]) -> None:
    agent, cloud = agent_with_cloud
    x, _ = sample_inputs(120)
    conf = edge_confidence(zoo, x)
    sources = [agent.infer(request(x[i:i + 1])).source for i in range(len(x))]
    for s, c in zip(sources, conf, strict=True):
        assert s is (Source.EDGE if c >= 0.8 else Source.CLOUD)
    assert Source.EDGE in sources and Source.CLOUD in sources
    assert cloud.served == sources.count(Source.CLOUD)
    assert agent.samples is not None and agent.samples.count("mnist1d") == cloud.served


def test_a_share_of_confident_answers_is_audited_in_the_background_and_kept(zoo: Path, broker: Mosquitto) -> None:
    store = ModelStore(zoo / "state" / "models")
    x, _ = sample_inputs(200, seed=7)
    confident = int((edge_confidence(zoo, x) >= 0.8).sum())
    with responding(broker, cloud_answer(store)) as cloud, \
            Agent(make_profile(zoo, broker, offload={**THRESHOLD, "audit_rate": 0.5}, api_port=free_port())) as agent:
        assert agent.uplink is not None and agent.uplink.wait_connected(5)
        assert eventually(lambda: agent.uplink is not None and agent.uplink.cloud_status is not None, 5)
        replies = [agent.infer(request(x[i:i + 1])) for i in range(len(x))]
        local = [r for r in replies if r.source is Source.EDGE]
        assert len(local) == confident and not any(r.degraded for r in local)  # audits never change an answer
        assert agent.samples is not None
        assert eventually(lambda: agent.samples is not None and agent.samples.count("mnist1d", "audit") > 0.25 * confident)
        assert agent.auditor is not None
        agent.auditor.stop()  # the audit in flight lands, later ones are dropped: the counts below hold still
        audited = agent.heartbeat()["audit"]["mnist1d"]
        assert audited["audited"] == agent.samples.count("mnist1d", "audit") and 0.5 <= audited["agreement"] <= 1.0
        assert cloud.served == len(x) - confident + audited["audited"]
        assert 'fedge_audits_total{outcome="kept",task="mnist1d"}' in agent.metrics_text()[0].decode()


def test_answers_carry_source_model_and_latency_split(agent_with_cloud: tuple[Agent, Any]) -> None:
    agent, _ = agent_with_cloud
    x, _ = sample_inputs(60, seed=1)
    replies = [agent.infer(request(x[i:i + 1], request_id=f"r{i}")) for i in range(len(x))]
    for i, reply in enumerate(replies):
        assert reply.request_id == f"r{i}" and not reply.degraded
        assert reply.outputs["probabilities"].shape == (1, 10)
        assert abs(float(reply.outputs["probabilities"].sum()) - 1) < 1e-4
        if reply.source is Source.CLOUD:
            assert reply.model_name == "responder"
            assert set(reply.timings_ms) == {"queue", "local", "network", "cloud"}
        else:
            assert reply.model_name == "mnist1d-edge" and reply.model_version == "1"
            assert set(reply.timings_ms) == {"queue", "local"}
        assert all(v >= 0 for v in reply.timings_ms.values())


def test_silent_cloud_gives_a_degraded_local_answer_within_the_deadline(agent_with_cloud: tuple[Agent, Any]) -> None:
    agent, cloud = agent_with_cloud
    cloud.silent.set()
    x, _ = sample_inputs(200, seed=2)
    unsure = next(i for i, c in enumerate(edge_confidence_of(agent, x)) if c < 0.8)
    started = time.monotonic()
    reply = agent.infer(request(x[unsure:unsure + 1], timeout_ms=400))
    elapsed_ms = (time.monotonic() - started) * 1000
    assert reply.source is Source.EDGE and reply.degraded
    assert elapsed_ms <= 400 * 1.1 + 20  # the deadline plus 10 % (and a scheduler tick)
    assert agent.uplink is not None and agent.uplink.inflight == 0
    assert agent.heartbeat()["degraded"] == {"mnist1d": {"cloud_late": 1}}  # counted by cause, for the fleet
    text = agent.metrics_text()[0].decode()
    assert 'fedge_degraded_by_cause_total{cause="cloud_late",task="mnist1d"} 1.0' in text


def edge_confidence_of(agent: Agent, x: np.ndarray) -> np.ndarray:
    return edge_confidence(agent.store.root.parent.parent, x)


def test_full_local_queue_offloads_by_capacity(zoo: Path, broker: Mosquitto) -> None:
    capacity = {**THRESHOLD, "threshold": 0.0, "max_queue_depth": 1, "max_inflight": 64}  # confidence alone never offloads
    store = ModelStore(zoo / "state" / "models")
    with responding(broker, cloud_answer(store)), \
            Agent(make_profile(zoo, broker, offload=capacity, api_port=free_port(),
                               batching={"max_batch_size": 1, "max_queue_delay_ms": 0})) as agent:
        assert agent.uplink is not None and agent.uplink.wait_connected(5)
        while agent.uplink.cloud_status is None:
            time.sleep(0.01)
        x, _ = sample_inputs(64, seed=3)
        replies: list[Any] = [None] * 64
        barrier = threading.Barrier(32)

        def call(i: int) -> None:
            barrier.wait() if i < 32 else None
            try:
                replies[i] = agent.infer(request(x[i:i + 1]))
            except ProtocolError as exc:
                replies[i] = exc
        threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    answered = [r for r in replies if r is not None]
    assert len(answered) == 64
    by_source = Counter(r.source for r in answered if not isinstance(r, ProtocolError))
    assert by_source[Source.CLOUD] > 0, by_source
    assert all(r.code is ErrorCode.OVERLOADED for r in answered if isinstance(r, ProtocolError))


def test_broker_killed_mid_stream_every_request_answered_once_and_offloading_resumes(
    zoo: Path, broker: Mosquitto
) -> None:
    store = ModelStore(zoo / "state" / "models")
    x, _ = sample_inputs(400, seed=4)
    with Agent(make_profile(zoo, broker, offload={**THRESHOLD, "threshold": 1.0}, api_port=free_port())) as agent:
        assert agent.uplink is not None
        replies: list[Any] = []
        with responding(broker, cloud_answer(store)):
            while agent.uplink.cloud_status is None:
                time.sleep(0.01)
            replies += [agent.infer(request(x[i:i + 1], timeout_ms=500)) for i in range(50)]
            broker.kill()
            replies += [agent.infer(request(x[i:i + 1], timeout_ms=500)) for i in range(50, 100)]
        broker.start()
        assert agent.uplink.wait_connected(15), "the agent reconnects by itself"
        with responding(broker, cloud_answer(store)):
            while agent.uplink.cloud_status is None:
                time.sleep(0.01)
            replies += [agent.infer(request(x[i:i + 1], timeout_ms=500)) for i in range(100, 150)]
    assert len(replies) == 150 and len({r.request_id for r in replies}) == 150
    assert all(r.source is Source.CLOUD for r in replies[:50])
    assert all(r.source is Source.EDGE and r.degraded for r in replies[50:100])
    assert all(r.source is Source.CLOUD for r in replies[100:])
    causes = agent.heartbeat()["degraded"]["mnist1d"]
    # at most the request in flight when the broker died can time out instead of seeing the connection go
    assert sum(causes.values()) == 50 and causes["broker_down"] >= 49, causes


def test_garbage_and_wrong_shape_replies_are_ignored_and_the_request_still_answered(zoo: Path, broker: Mosquitto) -> None:
    topics = Topics()
    with Agent(make_profile(zoo, broker, offload={**THRESHOLD, "threshold": 1.0}, api_port=free_port())) as agent, \
            client(broker, "bad-cloud") as bad:
        assert agent.uplink is not None and agent.uplink.wait_connected(5)
        bad.publish(topics.cloud_status, json.dumps({"healthy": True}), qos=1, retain=True).wait_for_publish(5)
        while agent.uplink.cloud_status is None:
            time.sleep(0.01)
        inbox = Inbox(bad)
        subscribe(bad, topics.infer_filter)
        x, _ = sample_inputs(3, seed=5)
        from agent.protocol import BodyKind, InferReply, encode_reply

        def answer_with(payload_props: tuple[bytes, Properties]) -> None:
            msg = inbox.get()
            payload, props = payload_props
            props.CorrelationData = msg.properties.CorrelationData
            bad.publish(msg.properties.ResponseTopic, payload, qos=1, properties=props)

        wrong_shape = encode_reply(InferReply({"p": np.ones((1, 3), np.float32)}, "bad", "1"), BodyKind.RAW)
        garbage = (b"\x00garbage", Properties(PacketTypes.PUBLISH))
        for i, bad_reply in enumerate((wrong_shape, garbage)):
            done: list[Any] = []
            t = threading.Thread(target=lambda i=i, done=done: done.append(
                agent.infer(request(x[i:i + 1], timeout_ms=3000))))
            t.start()
            answer_with(bad_reply)
            t.join(5)
            assert len(done) == 1 and done[0].source is Source.EDGE and done[0].degraded
        bad.publish(topics.cloud_status, b"", qos=1, retain=True).wait_for_publish(5)
        assert agent.heartbeat()["degraded"] == {"mnist1d": {"bad_reply": 2}}


def test_budget_controller_holds_its_rate_on_a_drifting_mnist1d_stream(zoo: Path) -> None:
    session = open_session(ModelStore(zoo / "state" / "models").get("mnist1d", "mnist1d-edge").model_path)
    x, _ = sample_inputs(1000, seed=6)
    rng = np.random.default_rng(0)
    stream = np.concatenate([x[rng.integers(0, 1000, 2500)],
                             x[rng.integers(0, 1000, 2500)] + rng.normal(0, 0.6, (2500, 40)).astype(np.float32)])
    conf = confidence(softmax(session.run(None, {"input": stream})[0]), "margin")
    assert abs(conf[2500:].mean() - conf[:2500].mean()) > 0.05  # the inputs really drift
    budget = OffloadBudget(0.2, window=500)
    decisions = np.array([budget.wants_offload(float(c)) for c in conf])
    assert abs(decisions.mean() - 0.2) <= 0.02
    assert abs(decisions[2500:].mean() - 0.2) <= 0.02  # and after the drift too


HUGE = 3e38  # finite in float32, yet it overflows the edge model's logits: its probabilities come out NaN


def _strict_json(text: str) -> Any:
    """JSON as the standard has it: NaN and Infinity are not numbers there."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _raw_post(port: int, path: str, body: bytes) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _infer_body(values: str) -> bytes:
    data = ", ".join([values] * 40)  # written out: json.dumps would not write 1e39 as it came
    return f'{{"inputs": [{{"name": "input", "shape": [1, 40], "datatype": "FP32", "data": [{data}]}}]}}'.encode()


def test_non_finite_input_is_refused_and_a_non_finite_output_never_answered(zoo: Path) -> None:
    session = open_session(ModelStore(zoo / "state" / "models").get("mnist1d", "mnist1d-edge").model_path)
    huge = np.full((1, 40), HUGE, np.float32)
    assert not np.isfinite(session.run(None, {"input": huge})[0]).all()  # the overflow this test is about
    port = free_port()
    with Agent(make_profile(zoo, None, api_port=port)) as agent:
        for values in ("NaN", "Infinity", "-Infinity", "1e39"):  # 1e39 does not fit FP32: it becomes infinity
            status, text = _raw_post(port, "/v2/models/mnist1d/infer", _infer_body(values))
            doc = _strict_json(text)
            assert (status, doc["code"]) == (400, "bad_request") and "finite" in doc["error"], (values, doc)
        x, _ = sample_inputs(2)
        x[1, 7] = np.nan
        with pytest.raises(ProtocolError, match="finite") as refused:
            agent.infer(request(x))
        assert refused.value.code is ErrorCode.BAD_REQUEST
        status, text = _raw_post(port, "/v2/models/mnist1d/infer", _infer_body(repr(HUGE)))
        doc = _strict_json(text)  # an error, not NaN probabilities passed off as a confident answer
        assert (status, doc["code"]) == (500, "internal") and "non-finite output" in doc["error"], doc
        status, text = _raw_post(port, "/v2/models/mnist1d/infer", _infer_body("0.5"))
        assert status == 200 and _strict_json(text)["parameters"]["source"] == "edge"


def test_nan_probabilities_are_never_confident_under_any_metric() -> None:
    """The agent tells a non-finite local output from its confidence, at no extra cost: this must hold."""
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is the point
        overflowed = softmax(np.array([[1, 2, 3], [np.inf, 0, 0], [3e38, -3e38, 0]], np.float32), 1e-3)
    assert np.isfinite(overflowed[0]).all() and np.isnan(overflowed[1:]).all()
    for probs in (overflowed, np.array([[0.2, 0.8, 0.0], [np.nan, 0.5, 0.5]], np.float32)):
        for metric in ("max_prob", "margin", "entropy"):
            assert np.isnan(confidence(probs, metric).min()), (metric, probs)


def test_a_non_finite_local_output_is_offloaded_or_refused_never_answered(zoo: Path, broker: Mosquitto) -> None:
    policy = {**THRESHOLD, "threshold": 0.0, "fusion": {"method": "geometric_mean", "weight": 0.5}}  # all confident
    huge = np.full((1, 40), HUGE, np.float32)
    x, _ = sample_inputs(1)
    with Agent(make_profile(zoo, broker, offload=policy, api_port=free_port())) as agent:
        assert agent.uplink is not None and agent.uplink.wait_connected(5)
        with pytest.raises(ProtocolError, match="non-finite") as refused:  # no cloud status: nowhere to offload
            agent.infer(request(huge, timeout_ms=500))
        assert refused.value.code is ErrorCode.INTERNAL
        with responding(broker, lambda rows: np.full((len(rows), 10), 0.1, np.float32)) as cloud:
            deadline = time.monotonic() + 5
            while agent.uplink.cloud_status is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert agent.infer(request(x)).source is Source.EDGE  # threshold 0: finite answers stay local
            reply = agent.infer(request(huge))
        assert cloud.served == 1
    assert reply.source is Source.CLOUD and not reply.degraded  # the cloud's alone: nothing to fuse with NaN
    np.testing.assert_allclose(reply.outputs["probabilities"], 0.1)


def test_feedback_labels_a_kept_sample(agent_with_cloud: tuple[Agent, Any]) -> None:
    agent, _ = agent_with_cloud
    assert agent.api is not None
    x, _ = sample_inputs(200, seed=7)
    offloaded = next(r for r in (agent.infer(request(x[i:i + 1])) for i in range(200)) if r.source is Source.CLOUD)
    status, doc = http_call(agent.api.port, "POST", "/v2/models/mnist1d/feedback",
                        json.dumps({"id": offloaded.request_id, "label": 3}).encode())
    assert status == 200, doc
    assert agent.samples is not None and 3 in agent.samples.training_set("mnist1d").labels.tolist()
    status, doc = http_call(agent.api.port, "POST", "/v2/models/mnist1d/feedback",
                            json.dumps({"id": "nope", "label": 1}).encode())
    assert (status, doc["code"]) == (404, "not_found"), doc
    other = next(r for r in (agent.infer(request(x[i:i + 1])) for i in range(200)) if r.request_id != offloaded.request_id)
    status, doc = http_call(agent.api.port, "POST", "/v2/models/mnist1d/feedback",
                        json.dumps({"id": other.request_id, "label": 10}).encode())  # ten classes: 0..9
    assert status == 400 and "not a class" in doc["error"], doc
    for label in (99, 10, -1):  # the first label took the answer out of the recent ones: the stored sample still knows
        status, doc = http_call(agent.api.port, "POST", "/v2/models/mnist1d/feedback",
                            json.dumps({"id": offloaded.request_id, "label": label}).encode())
        assert status == 400 and "not a class" in doc["error"] and doc["code"] == "bad_request", doc
    assert agent.samples.training_set("mnist1d").labels.tolist().count(3) == 1
    assert not {99, 10} & set(agent.samples.training_set("mnist1d").labels.tolist())
    status, doc = http_call(agent.api.port, "POST", "/v2/models/nope/feedback",
                        json.dumps({"id": offloaded.request_id, "label": 4}).encode())
    assert (status, doc["code"]) == (404, "unknown_task") and "unknown model" in doc["error"], doc


def test_feedback_counts_only_under_the_model_that_answered(zoo: Path) -> None:
    port = free_port()
    doc = profile_doc(zoo, None, api_port=port)
    edge_file = ModelStore(zoo / "state" / "models").get("mnist1d", "mnist1d-edge").model_path
    doc["models"]["twin"] = {"path": str(edge_file), "input": {"name": "input", "shape": [-1, 40]}}
    x, _ = sample_inputs(2)
    with Agent(parse_profile(yaml.safe_dump(doc), "twin.yaml", env={})) as agent:
        twin = agent.infer(InferRequest("twin", {"input": x[:1]}))
        status, body = http_call(port, "POST", "/v2/models/mnist1d/feedback", json.dumps({"id": twin.request_id,
                                                                                         "label": 3}).encode())
        assert status == 404 and "another model's" in body["error"], body  # type: ignore[index]
        assert not agent.feedback(twin.request_id, 3, task="mnist1d")
        status, body = http_call(port, "POST", "/v2/models/twin/feedback", json.dumps({"id": twin.request_id,
                                                                                      "label": 3}).encode())
        assert status == 200, body
        heartbeat = agent.heartbeat()["feedback"]["tasks"]
    assert list(heartbeat) == ["twin"]  # counted once, for the task that answered


def test_heartbeat_and_retained_status_reach_the_broker(zoo: Path, broker: Mosquitto) -> None:
    topics = Topics()
    with client(broker, "registry") as registry:
        inbox = Inbox(registry)
        subscribe(registry, topics.device_heartbeat("test-dev"))
        with Agent(make_profile(zoo, broker, offload=THRESHOLD, api_port=free_port())):
            beat = json.loads(inbox.get(timeout=5).payload)
    assert beat["device_id"] == "test-dev" and beat["models"] == {"mnist1d": "1"}
    assert {"offload_rate", "queue_depth", "latency_ms", "rss_mb"} <= beat.keys()


def test_the_inference_path_imports_no_torch_and_no_flower(zoo: Path, broker: Mosquitto) -> None:
    """Also with federated rounds on: the SuperNode is another process; the agent only starts and stops it."""
    federated = {"enabled": True, "server_address": f"127.0.0.1:{free_port()}", "clientapp_port": free_port()}
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from tests.agent_support import make_profile
from pathlib import Path
import numpy as np
from agent.agent import Agent
from agent.protocol import InferRequest
from cloud.local.mosquitto import Mosquitto
x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
broker = Mosquitto.__new__(Mosquitto)
broker.host, broker.port = "127.0.0.1", {broker.port}
profile = make_profile(Path({str(zoo)!r}), broker, api_port={free_port()}, federated={federated!r})
with Agent(profile) as agent:
    assert agent.supernode is not None and agent.uplink.wait_connected(10)
    reply = agent.infer(InferRequest("mnist1d", {{"input": x}}))
assert reply.outputs["probabilities"].shape == (3, 10)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "flwr")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_release_of_another_precision_than_the_profile_asks_for_runs_and_is_reported(
        zoo: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = ModelStore(zoo / "state" / "models").get("mnist1d", "mnist1d-edge").manifest
    assert manifest.precision == "fp32"  # the zoo's plain export (recipe "trained", no quantization)
    for recipe, precision in (({"quantization": "static-minmax-pc"}, "int8"), ({"quantization": "dynamic"}, "int8"),
                              ({"quantization": "fp16"}, "fp16"), ({"quantization": "fp32"}, "fp32"),
                              ({"quantization": "something-new"}, None), (None, None), ({"notes": "mine"}, None)):
        assert manifest.model_copy(update={"recipe": recipe}).precision == precision, recipe
    x, _ = sample_inputs(1)
    for asked, warned in (("int8", True), ("fp32", False)):
        doc = profile_doc(zoo, None, api_port=free_port())
        doc["models"]["mnist1d"]["precision"] = asked
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="agent.runtime"), \
                Agent(parse_profile(yaml.safe_dump(doc), "test-profile.yaml", env={})) as agent:
            assert agent.infer(request(x)).source is Source.EDGE  # it serves what was released
        said = [r for r in caplog.records if "precision" in r.getMessage()]
        assert len(said) == (1 if warned else 0), [r.getMessage() for r in said]
        if warned:
            text = said[0].getMessage()
            assert said[0].levelno == logging.WARNING and "precision is int8" in text and "an fp32 export" in text
            assert "runs as released" in text and "compress --task mnist1d" in text, text
    int8_profile = profile_doc(zoo, None)
    int8_profile["models"]["mnist1d"]["precision"] = "int8"
    spec = parse_profile(yaml.safe_dump(int8_profile), "p.yaml", env={}).models["mnist1d"]
    for recipe, level in (({"variant": "channels25+fp16", "quantization": "fp16"}, logging.INFO),
                          ({"variant": "channels50+static-minmax", "quantization": "static-minmax"}, None),
                          ({"notes": "a user's own file"}, None)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="agent.runtime"):
            check_precision("mnist1d", spec, manifest.model_copy(update={"recipe": recipe}))
        said = [(r.levelno, r.getMessage()) for r in caplog.records]
        if level is None:  # the precision asked for, or one nobody can tell
            assert said == [], said
        else:  # compress chose fp16 for the whole fleet: noted, not warned, and no remedy that cannot help
            assert len(said) == 1 and said[0][0] == level and "compression chose" in said[0][1], said
            assert "compress --task" not in said[0][1]


def test_a_task_without_an_offload_policy_takes_the_profiles_default_queue_bound(zoo: Path) -> None:
    from agent.profile.offload import PolicyBase

    with Agent(make_profile(zoo, None, api_port=free_port())) as agent:
        assert agent.local_model("mnist1d").batcher.max_queue_depth == PolicyBase.model_fields["max_queue_depth"].default


def test_a_device_that_only_answers_locally_still_reports_to_the_broker_its_profile_names(
        zoo: Path, broker: Mosquitto) -> None:
    """No offload, updates or training: the fleet still sees it (heartbeat, status); without a broker section, no one."""
    topics = Topics()
    with client(broker, "registry") as registry:
        inbox = Inbox(registry)
        subscribe(registry, topics.device_heartbeat("test-dev"))
        with Agent(make_profile(zoo, broker, api_port=free_port())) as agent:
            beat = json.loads(inbox.get(timeout=5).payload)
            assert agent.uplink is not None
    assert beat["device_id"] == "test-dev" and beat["offload_rate"] == 0.0
    with Agent(make_profile(zoo, None, api_port=free_port())) as alone:
        assert alone.uplink is None  # nothing to report to: no connection attempts to a default localhost
