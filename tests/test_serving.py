"""Cloud serving: the scheduler, a worker on a real broker, and the coordinator's worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
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
from cloud.mosquitto import Mosquitto, free_port
from cloud.serving.coordinator import Coordinator
from cloud.serving.scheduler import JobQueue
from cloud.serving.worker import Worker, WorkerSettings
from tests.agent_support import make_profile, sample_inputs, train_small_zoo
from tests.mqtt_helpers import Inbox, client, subscribe

TOPICS = Topics()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    train_small_zoo(root / "state" / "models")
    return root


def settings(zoo: Path, broker: Mosquitto, **kw: Any) -> WorkerSettings:
    return WorkerSettings(store=zoo / "state" / "models", host=broker.host, port=broker.port,
                          worker_id=kw.pop("worker_id", "w"), status_interval_s=0.2, **kw)


@pytest.fixture
def worker(zoo: Path, broker: Mosquitto) -> Iterator[Worker]:
    w = Worker(settings(zoo, broker))
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    with client(broker, "probe") as probe:  # wait until the worker reports, so it is subscribed
        inbox = Inbox(probe)
        subscribe(probe, w.status_topic)
        inbox.get(timeout=10)
    yield w
    w.stop()
    thread.join(10)


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
                            capture_output=True, text=True, timeout=30)
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
    assert worker.expired == 1 and worker.served == 0


def test_a_thousand_malformed_requests_get_a_thousand_error_replies(worker: Worker, broker: Mosquitto) -> None:
    rng = np.random.default_rng(0)
    with client(broker, "fuzzer") as fuzzer:
        inbox = Inbox(fuzzer)
        subscribe(fuzzer, "test/fuzz")
        for i in range(1000):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "test/fuzz"
            if i % 3 == 0:
                props.UserProperty = [("fedge-tensor", f"input;float32;{rng.integers(1, 1 << 20)},{rng.integers(1, 9)}")]
            elif i % 3 == 1:
                props.ContentType = "application/json"
            fuzzer.publish(TOPICS.infer("mnist1d"), rng.bytes(int(rng.integers(0, 64))), qos=1, properties=props)
        replies = [decode_reply(m.payload, m.properties) for m in (inbox.get(timeout=20) for _ in range(1000))]
    assert all(isinstance(r, ErrorReply) for r in replies)
    assert worker.errors == 1000
    x, _ = sample_inputs(1)
    payload, props = encode_request(InferRequest("mnist1d", {"input": x}), response_topic="test/replies")
    assert isinstance(_ask(broker, payload, props), InferReply)  # still serving


def test_two_worker_processes_share_the_load_and_survive_a_kill(zoo: Path, broker: Mosquitto) -> None:
    coordinator = Coordinator(settings(zoo, broker, worker_id="proc"), workers=2, status_interval_s=0.2)
    runner = threading.Thread(target=coordinator.run, daemon=True)
    runner.start()
    offload = {"mode": "threshold", "metric": "max_prob", "threshold": 1.0, "default_deadline_ms": 3000}
    try:
        with Agent(make_profile(zoo, broker, offload=offload, api_port=free_port())) as agent:
            assert agent.offload is not None
            deadline = time.monotonic() + 60
            while not (agent.offload.cloud_status and agent.offload.cloud_status.doc.get("workers_alive") == 2):
                assert time.monotonic() < deadline, "workers did not come up"
                time.sleep(0.05)
            time.sleep(1.0)  # both workers subscribed and reporting
            x, _ = sample_inputs(300)
            replies = [agent.infer(InferRequest("mnist1d", {"input": x[i:i + 1]})) for i in range(100)]
            assert all(r.source is Source.CLOUD for r in replies)
            time.sleep(0.5)
            served = coordinator.status()["served"]
            assert len(served) == 2 and all(n > 0 for n in served.values()), served
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
