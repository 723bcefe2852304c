"""Cloud serving: the scheduler, a worker on a real broker, and the coordinator's worker processes."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.agent import Agent
from agent.mqtt_client import BrokerConnectError, BrokerSettings
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
from cloud.cli import main as cloud_main
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.registry import ModelRecord, ModelState, open_registry
from cloud.serving.coordinator import Coordinator
from cloud.serving.scheduler import JobQueue
from cloud.serving.worker import Worker, WorkerSettings
from tests.agent_support import make_profile, sample_inputs, train_small_zoo
from tests.conftest import USERS
from tests.mqtt_helpers import Inbox, client, subscribe
from tests.serving_support import running_worker

TOPICS = Topics()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    train_small_zoo(root / "state" / "models")
    return root


def settings(zoo: Path, broker: Mosquitto, **kw: Any) -> WorkerSettings:
    return WorkerSettings(store=zoo / "state" / "models", broker=broker.settings,
                          worker_id=kw.pop("worker_id", "w"), status_interval_s=0.2, **kw)


@pytest.fixture
def worker(zoo: Path, broker: Mosquitto) -> Iterator[Worker]:
    with running_worker(settings(zoo, broker), broker) as w:
        yield w


def test_queue_orders_by_priority_then_deadline_and_sheds_the_lowest() -> None:
    queue = JobQueue(max_depth=3)
    x = np.zeros((1, 40), np.float32)
    now = time.monotonic()
    for priority, deadline, rid in ((1, now + 9, "low"), (9, now + 5, "urgent-late"), (9, now + 1, "urgent-soon")):
        assert queue.put(InferRequest("t", {"input": x}, request_id=rid, priority=priority), deadline, None) is None
    shed = queue.put(InferRequest("t", {"input": x}, request_id="mid", priority=5), now + 3, None)
    assert shed is not None and shed.request.request_id == "low"
    shed = queue.put(InferRequest("t", {"input": x}, request_id="late", priority=9), now - 1, None)
    assert shed is not None and shed.request.request_id == "mid"
    taken = queue.take(max_batch=8, max_delay_s=0)
    assert taken is not None
    batch, expired = taken
    assert [j.request.request_id for j in batch] == ["urgent-soon", "urgent-late"]
    assert [j.request.request_id for j in expired] == ["late"]


def _ask(broker: Mosquitto, payload: bytes, props: Properties | None, reply_to: str = "test/replies") -> Any:
    with client(broker, "asker") as asker:
        inbox = Inbox(asker)
        subscribe(asker, reply_to)
        asker.publish(TOPICS.infer("mnist1d"), payload, qos=1, properties=props)
        msg = inbox.get(timeout=10)
        return decode_reply(msg.payload, msg.properties)


def test_generic_client_gets_an_oip_answer(worker: Worker, broker: Mosquitto) -> None:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 40], "datatype": "FP32", "data": [0.1] * 40}]})
    result = subprocess.run(["mosquitto_rr", "-V", "5", "-h", broker.host, "-p", str(broker.port), "-t",
                             TOPICS.infer("mnist1d"), "-e", TOPICS.default_reply("mnist1d"), "-W", "10", "-m", body],
                            capture_output=True, check=False, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model_name"] == "mnist1d-cloud" and doc["outputs"][0]["shape"] == [1, 10]
    assert abs(sum(doc["outputs"][0]["data"]) - 1) < 1e-4


def test_expired_requests_are_answered_but_never_run(worker: Worker, broker: Mosquitto) -> None:
    x, _ = sample_inputs(1)
    payload, props = encode_request(InferRequest("mnist1d", {"input": x}, timeout_ms=0), response_topic="test/replies",
                                    correlation_data=b"late")
    reply = _ask(broker, payload, props)
    assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.EXPIRED
    assert worker.stats.expired == 1 and worker.stats.served == 0


def test_non_finite_input_is_refused_by_name_and_never_run(worker: Worker, broker: Mosquitto) -> None:
    x, _ = sample_inputs(1)
    x = x.copy()
    x[0, 3] = np.nan
    payload, props = encode_request(InferRequest("mnist1d", {"input": x}), response_topic="test/replies")
    reply = _ask(broker, payload, props)
    assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.BAD_REQUEST and "NaN" in reply.message
    assert worker.stats.served == 0


def test_inputs_are_checked_against_the_served_models_shape_before_it_runs(worker: Worker, broker: Mosquitto) -> None:
    """Raw and JSON bodies alike: a wrong shape is shape_mismatch naming both shapes, never ONNX Runtime's text."""
    x, _ = sample_inputs(1)
    wrong = [("raw [1, 39]", encode_request(InferRequest("mnist1d", {"input": x[:, :39]}), response_topic="test/replies")),
             ("raw [1, 40, 1]", encode_request(InferRequest("mnist1d", {"input": x[..., None]}), response_topic="test/replies")),
             ("raw [0, 40]", encode_request(InferRequest("mnist1d", {"input": x[:0]}), response_topic="test/replies"))]
    digits = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}  # digits-shaped
    wrong.append(("JSON digits", (json.dumps(digits).encode(), _reply_properties("test/replies"))))
    for label, (payload, props) in wrong:
        reply = _ask(broker, payload, props)
        assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.SHAPE_MISMATCH, (label, reply)
        assert "takes shape ['N', 40]" in reply.message and "mnist1d-cloud" in reply.message, (label, reply.message)
    assert worker.stats.served == 0
    one = encode_request(InferRequest("mnist1d", {"input": x[0]}), response_topic="test/replies")  # no batch axis: one row
    reply = _ask(broker, *one)
    assert isinstance(reply, InferReply) and reply.outputs["probabilities"].shape == (1, 10)


def _reply_properties(topic: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topic
    props.ContentType = "application/json"
    return props


def test_a_thousand_malformed_requests_get_a_thousand_error_replies(worker: Worker, broker: Mosquitto) -> None:
    rng = np.random.default_rng(0)
    with client(broker, "fuzzer") as fuzzer:
        inbox = Inbox(fuzzer)
        subscribe(fuzzer, "test/fuzz")
        for i in range(1000):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "test/fuzz"
            body = rng.bytes(int(rng.integers(0, 64)))
            if i % 5 == 0:
                props.UserProperty = [("fedge-tensor", f"input;float32;{rng.integers(1, 1 << 20)},{rng.integers(1, 9)}")]
            elif i % 5 == 1:
                props.ContentType = "application/json"
            elif i % 5 == 3:  # a well-formed scalar input (no batch dimension), with fusion every other time
                fusion = [("fedge-tensor", "edge_probs;float32;1,10"), ("fedge-fusion", "0.5")] if i % 2 else []
                props.UserProperty = [("fedge-tensor", "x;float32;"), *fusion]
                body = rng.bytes(4 + (40 if fusion else 0))
            fuzzer.publish(TOPICS.infer("mnist1d"), body, qos=1, properties=props)
        replies = [decode_reply(m.payload, m.properties) for m in (inbox.get(timeout=20) for _ in range(1000))]
    assert all(isinstance(r, ErrorReply) for r in replies)
    assert sum(r.code is ErrorCode.SHAPE_MISMATCH and "got []" in r.message for r in replies) == 200  # the scalars
    assert worker.stats.errors == 1000
    x, _ = sample_inputs(1)
    payload, props = encode_request(InferRequest("mnist1d", {"input": x}), response_topic="test/replies")
    assert isinstance(_ask(broker, payload, props), InferReply)  # still serving


def test_a_request_on_an_empty_task_level_gets_its_error_reply(worker: Worker, broker: Mosquitto) -> None:
    """``fedge/v1/infer/`` names no task: the error goes to the Response Topic the request gave."""
    with client(broker, "empty-task") as asker:
        inbox = Inbox(asker)
        subscribe(asker, "test/empty")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = "test/empty", b"e1"
        asker.publish(f"{TOPICS.prefix}/infer/", b"{}", qos=1, properties=props)
        msg = inbox.get(timeout=10)
    reply = decode_reply(msg.payload, msg.properties)
    assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.BAD_REQUEST and "names no task" in reply.message
    assert msg.properties.CorrelationData == b"e1"


def test_hostile_response_topics_are_logged_in_one_line_and_dropped(worker: Worker, broker: Mosquitto,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloud.serving.worker")
    x, _ = sample_inputs(1)
    hostile = ["test/+/reply", "test/#", "$SYS/broker/fake"]
    with client(broker, "hostile") as asker:
        inbox = Inbox(asker)
        subscribe(asker, "test/#")
        for topic in hostile:
            payload, props = encode_request(InferRequest("mnist1d", {"input": x}), response_topic=topic)
            asker.publish(TOPICS.infer("mnist1d"), payload, qos=1, properties=props)
        payload, props = encode_request(InferRequest("mnist1d", {"input": x}), response_topic="test/fine")
        asker.publish(TOPICS.infer("mnist1d"), payload, qos=1, properties=props)
        answered = inbox.get(timeout=10)  # the good request after them is answered, on its topic
        assert answered.topic == "test/fine" and isinstance(decode_reply(answered.payload, answered.properties),
                                                            InferReply)
        with pytest.raises(queue.Empty):
            inbox.get(timeout=0.5)  # and nothing was published anywhere else
    dropped = [r for r in caplog.records if "dropped a request" in r.getMessage()]
    assert len(dropped) == len(hostile) and all(r.exc_info is None for r in caplog.records)
    assert worker.stats.errors == len(hostile)


class _FaultyWorker(Worker):
    """A worker whose own code fails on chosen requests: the bugs the worker's last-resort guards are for."""

    def _choose(self, request: InferRequest) -> str:
        if request.request_id == "boom-receiving":
            raise RuntimeError("injected failure while receiving")
        return super()._choose(request)

    def _reply(self, job: Any, *args: Any) -> None:
        if job.request.request_id == "boom-answering":
            raise RuntimeError("injected failure while answering")
        super()._reply(job, *args)


def test_a_failure_in_the_worker_fails_one_request_and_the_worker_keeps_serving(zoo: Path, broker: Mosquitto) -> None:
    ids = ["boom-receiving", "a", "boom-answering", "b", "c"]
    x, _ = sample_inputs(1)
    with running_worker(settings(zoo, broker, max_delay_ms=300), broker, _FaultyWorker) as w, \
            client(broker, "asker") as asker:
        inbox = Inbox(asker)
        subscribe(asker, "test/replies")
        for rid in ids:  # within one batch delay: a, boom-answering, b, c run as one batch
            payload, props = encode_request(InferRequest("mnist1d", {"input": x}, request_id=rid),
                                            response_topic="test/replies")
            asker.publish(TOPICS.infer("mnist1d"), payload, qos=1, properties=props)
        replies = {r.request_id: r for r in (decode_reply(m.payload, m.properties)
                                             for m in (inbox.get(timeout=20) for _ in ids))}
        assert sorted(replies) == sorted(ids)
        for rid in ("boom-receiving", "boom-answering"):
            failed = replies[rid]
            assert isinstance(failed, ErrorReply) and failed.code is ErrorCode.INTERNAL and "injected" in failed.message
        assert all(isinstance(replies[rid], InferReply) for rid in "abc")
        assert w.stats.errors == 2 and w.stats.served == 3
        # both threads survived: a later request is still answered
        payload, props = encode_request(InferRequest("mnist1d", {"input": x}, request_id="after"),
                                        response_topic="test/replies")
        asker.publish(TOPICS.infer("mnist1d"), payload, qos=1, properties=props)
        msg = inbox.get(timeout=20)
        after = decode_reply(msg.payload, msg.properties)
        assert isinstance(after, InferReply) and after.request_id == "after"


def _decisions(status: dict[str, Any]) -> dict[str, int]:
    return status.get("tasks", {}).get("mnist1d", {}).get("decisions", {}).get("mnist1d-cloud", {})


def test_two_worker_processes_share_the_load_and_survive_a_kill(zoo: Path, broker: Mosquitto) -> None:
    coordinator = Coordinator(settings(zoo, broker, worker_id="proc"), workers=2, status_interval_s=0.2)
    runner = threading.Thread(target=coordinator.run, daemon=True)
    runner.start()
    offload = {"mode": "threshold", "metric": "max_prob", "threshold": 1.0, "default_deadline_ms": 3000}
    try:
        with Agent(make_profile(zoo, broker, offload=offload, api_port=free_port())) as agent, \
                client(broker, "watcher") as watcher:
            assert agent.uplink is not None
            statuses = Inbox(watcher)
            subscribe(watcher, TOPICS.cloud_status)
            _wait_for_status(statuses, lambda doc: doc.get("workers_alive") == 2)  # both reported: subscribed
            deadline = time.monotonic() + 60
            while not (agent.uplink.cloud_status and agent.uplink.cloud_status.doc.get("workers_alive") == 2):
                assert time.monotonic() < deadline, "the agent did not get the status"
                time.sleep(0.05)
            x, _ = sample_inputs(300)
            replies = [agent.infer(InferRequest("mnist1d", {"input": x[i:i + 1]})) for i in range(100)]
            assert all(r.source is Source.CLOUD for r in replies)
            # reports come every interval; the retained status folds them
            status = _wait_for_status(statuses, lambda doc: sum(_decisions(doc).values()) >= 100, timeout=30)
            assert len(status["served"]) == 2 and all(n > 0 for n in status["served"].values()), status
            mnist = status["tasks"]["mnist1d"]  # per-task load from the workers' reports
            assert mnist["queue_depth"] == 0 and 0 < mnist["p50_ms"] <= mnist["p99_ms"]
            assert agent.uplink.cloud_status is not None and "tasks" in agent.uplink.cloud_status.doc  # retained
            victim = coordinator.worker_pids[0]
            answers: list[InferReply] = []
            stream = threading.Thread(target=lambda: answers.extend(
                agent.infer(InferRequest("mnist1d", {"input": x[i:i + 1]}, timeout_ms=1000)) for i in range(100, 300)))
            stream.start()
            time.sleep(0.05)
            os.kill(victim, signal.SIGKILL)
            stream.join(120)
            assert len(answers) == 200 and len({a.request_id for a in answers}) == 200
            assert all(a.source is Source.CLOUD or a.degraded for a in answers)
            deadline = time.monotonic() + 60
            while victim in coordinator.worker_pids or coordinator.status()["workers_alive"] < 2:
                assert time.monotonic() < deadline, "the killed worker was not replaced"
                time.sleep(0.1)
    finally:
        coordinator.stop()
        runner.join(30)


def _wait_for_status(inbox: Inbox, check: Any, timeout: float = 60) -> dict[str, Any]:
    """The first retained cloud status that passes ``check``."""
    deadline = time.monotonic() + timeout
    while True:
        doc = json.loads(inbox.get(timeout=max(0.1, deadline - time.monotonic())).payload)
        if check(doc):
            return doc


def _devices(registry: Path) -> list[dict[str, Any]]:
    """What `fedge-cloud devices --json` lists."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cloud_main(["devices", "--registry", str(registry), "--json"]) == 0
    return list(json.loads(out.getvalue()))


def test_serve_connects_to_an_acl_broker_with_the_config_credentials(zoo: Path, acl_broker: Mosquitto,
                                                                     tmp_path: Path) -> None:
    (tmp_path / "worker.pw").write_text(USERS["worker"] + "\n")
    config = tmp_path / "cloud.yaml"
    config.write_text(f"""
broker:
  host: {acl_broker.host}
  port: {acl_broker.port}
  username: worker
  password_file: worker.pw
  coordinator:
    username: coordinator
    password_env: TEST_COORDINATOR_PASSWORD
workers:
  count: 1
  max_batch: 4
  status_interval_s: 0.2
store: {zoo / "state" / "models"}
registry: {tmp_path / "registry.db"}
""")
    env = {**os.environ, "TEST_COORDINATOR_PASSWORD": USERS["coordinator"]}
    log = tmp_path / "serve.log"  # a file, not a pipe: nobody reads a pipe until the end, and logs could fill it
    with log.open("w") as log_file:
        serve = subprocess.Popen([sys.executable, "-m", "cloud.cli", "serve", "--config", str(config)], env=env,
                                 stdout=log_file, stderr=subprocess.STDOUT, text=True)
    try:
        with client(acl_broker, "device-a", username="device-a", password=USERS["device-a"]) as device:
            inbox = Inbox(device)
            subscribe(device, TOPICS.cloud_status)
            status = _wait_for_status(inbox, lambda doc: doc.get("workers_alive") == 1)
            assert status["healthy"] and "mnist1d" in status["tasks"]
            subscribe(device, TOPICS.device_reply("device-a"))
            x, _ = sample_inputs(1)
            payload, props = encode_request(InferRequest("mnist1d", {"input": x}, timeout_ms=5000),
                                            response_topic=TOPICS.device_reply("device-a"), correlation_data=b"a1")
            device.publish(TOPICS.infer("mnist1d"), payload, qos=1, properties=props)
            while (msg := inbox.get(timeout=20)).topic != TOPICS.device_reply("device-a"):
                continue
            reply = decode_reply(msg.payload, msg.properties)
            assert isinstance(reply, InferReply) and reply.model_name == "mnist1d-cloud"
            assert msg.properties.CorrelationData == b"a1"
            # The coordinator keeps the device registry from what devices publish (its ACL user may read it).
            heartbeat = {"device_id": "device-a", "kind": "pi", "models": {"mnist1d": "3"}, "offload_rate": 0.25}
            device.publish(TOPICS.device_heartbeat("device-a"), json.dumps(heartbeat), qos=1).wait_for_publish(5)
            deadline = time.monotonic() + 30
            while not (listed := _devices(tmp_path / "registry.db")):
                assert time.monotonic() < deadline, "the coordinator did not record the heartbeat"
                time.sleep(0.1)
            assert listed[0]["device_id"] == "device-a" and listed[0]["models"] == {"mnist1d": "3"}
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    output = log.read_text()
    assert serve.returncode == 0, output
    assert "Traceback" not in output


def _running(*coordinators: Coordinator) -> list[threading.Thread]:
    runners = [threading.Thread(target=c.run, daemon=True) for c in coordinators]
    for runner in runners:
        runner.start()
    return runners


def test_a_coordinator_that_cannot_reach_the_broker_leaves_nothing_running(zoo: Path) -> None:
    threads, children = set(threading.enumerate()), set(multiprocessing.active_children())
    coordinator = Coordinator(WorkerSettings(store=zoo / "state" / "models", broker=BrokerSettings("127.0.0.1", free_port()),
                                             worker_id="lonely"), workers=2)
    with pytest.raises(BrokerConnectError):
        coordinator.run()
    assert set(multiprocessing.active_children()) - children == set()  # no worker left behind
    assert [t.name for t in set(threading.enumerate()) - threads if t.is_alive()] == []  # nor a network loop


def test_serve_hosts_on_one_broker_share_the_status_and_one_leaving_keeps_it_healthy(zoo: Path,
                                                                                      broker: Mosquitto) -> None:
    a, b = (Coordinator(settings(zoo, broker, worker_id=host), workers=1, status_interval_s=0.2)
            for host in ("host-a", "host-b"))
    runners = _running(a, b)
    try:
        with client(broker, "watcher") as watcher:
            statuses = Inbox(watcher)
            subscribe(watcher, TOPICS.cloud_status)
            both = _wait_for_status(statuses, lambda doc: doc.get("workers_alive") == 2, timeout=30)
            assert both["healthy"] and set(both["served"]) == {"host-a-0", "host-b-0"}
            with client(broker, "late") as late:  # the retained status expires unless refreshed
                retained = Inbox(late)
                subscribe(late, TOPICS.cloud_status)
                msg = retained.get(timeout=10)
                assert msg.retain and 1 <= msg.properties.MessageExpiryInterval <= math.ceil(3 * 0.2)
            a.stop()
            runners[0].join(30)
            while set((doc := json.loads(statuses.get(timeout=30).payload))["served"]) != {"host-b-0"}:
                assert doc["healthy"], doc  # host-a's goodbye did not mark the cloud down
            assert doc["healthy"] and doc["workers_alive"] == 1
            assert _presence(broker, 2) == {"host-a": b"offline", "host-b": b"online"}
        b.stop()  # its goodbye may still count host-a's worker, fresh for a moment: the expiry clears it
        runners[1].join(30)
        deadline = time.monotonic() + 30
        while _retained_status(broker) is not None:  # nobody refreshes it: the broker drops it
            assert time.monotonic() < deadline, "the last cloud status never expired"
    finally:
        for coordinator, runner in zip((a, b), runners, strict=True):
            coordinator.stop()
            runner.join(30)


def _presence(broker: Mosquitto, coordinators: int) -> dict[str, bytes]:
    """Coordinator id -> its retained presence, once ``coordinators`` have arrived."""
    with client(broker, "presence") as c:
        inbox = Inbox(c)
        subscribe(c, TOPICS.coordinator_presences)
        found: dict[str, bytes] = {}
        while len(found) < coordinators:
            msg = inbox.get(timeout=10)
            found[msg.topic.rsplit("/", 1)[1]] = bytes(msg.payload)
        return found


def _retained_status(broker: Mosquitto) -> bytes | None:
    """The retained cloud status a new subscriber gets, if any (it comes right after the SUBACK)."""
    with client(broker, "late") as c:
        inbox = Inbox(c)
        subscribe(c, TOPICS.cloud_status)
        try:
            return bytes(inbox.get(timeout=0.5).payload)
        except queue.Empty:
            return None


def test_a_lone_coordinator_keeps_live_model_metrics_in_the_registry_and_leaves_the_cloud_unhealthy(
        zoo: Path, broker: Mosquitto, tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    coordinator = Coordinator(settings(zoo, broker, worker_id="metrics", registry_url=str(registry)), workers=1,
                              status_interval_s=0.2, metrics_every=2)
    [runner] = _running(coordinator)
    try:
        with client(broker, "watcher") as watcher:
            statuses = Inbox(watcher)
            subscribe(watcher, TOPICS.cloud_status)
            deadline = time.monotonic() + 60
            while not (record := _cloud_record(registry)) or "latency_ms_b1" not in record.metrics:
                assert time.monotonic() < deadline, "no live metrics in the registry"
                time.sleep(0.1)
            coordinator.stop()
            runner.join(30)
            assert not _wait_for_status(statuses, lambda doc: not doc["healthy"])["workers_alive"]  # the only host
    finally:
        coordinator.stop()
        runner.join(30)
    assert record.state is ModelState.STAGED  # registered so it can hold metrics; serving did not change
    assert record.metrics["latency_ms_b1"] > 0 and record.metrics["latency_ms_b32"] > 0  # the warm-up runs
    assert "test_accuracy" in record.metrics  # from its manifest
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cloud_main(["models", "list", "--json", "--registry", str(registry), "--store",
                           str(zoo / "state" / "models")]) == 0
    [row] = [r for r in json.loads(out.getvalue()) if r["name"] == "mnist1d-cloud"]
    assert row["registry_metrics"]["latency_ms_b1"] == record.metrics["latency_ms_b1"]


def _cloud_record(registry: Path) -> ModelRecord | None:
    with open_registry(registry) as opened:
        return opened.model("mnist1d", "mnist1d-cloud", 1)
