"""Ten times more requests than there is room for, with the real processes: `fedge-agent run` and
`fedge-cloud serve` on a model that takes tens of ms per sample. Every request gets one answer within its
deadline, what does not fit is answered `overloaded` lowest priority first, high-priority requests are
served, and neither process grows past its bounded queue."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml

from agent.process_tree import stop
from agent.protocol import ErrorReply, InferReply, InferRequest, Topics, decode_reply, encode_request
from cloud.local.mosquitto import Mosquitto, free_port
from tests.agent_support import profile_doc, sample_inputs, train_small_zoo
from tests.http_support import http_call
from tests.mqtt_helpers import Inbox, client, eventually, subscribe
from tests.serving_support import LARGE, publish_slowed

BIN = Path(sys.executable).parent
HIGH, LOW = 9, 1
DEADLINE_MS = 20_000


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose latest mnist1d-cloud is slowed to tens of ms per sample (the same answers)."""
    root = tmp_path_factory.mktemp("overload")
    publish_slowed(train_small_zoo(root / "state" / "models"), LARGE)
    return root


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _request_body(row: list[float], priority: int) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 40], "datatype": "FP32", "data": row}],
                       "parameters": {"priority": priority, "timeout_ms": DEADLINE_MS}}).encode()


def test_the_agent_ten_times_over_capacity_sheds_low_priorities_and_serves_the_high(zoo: Path,
                                                                                    tmp_path: Path) -> None:
    """One request runs and 4 wait; 50 callers at once, 4 of them high priority (as many as may wait: whatever
    runs, each finds a low one to push out). The broker is unreachable (a port nobody listens on): nothing can
    be offloaded, so the agent alone decides who is served."""
    callers, depth = 50, 4
    high = {0, 12, 24, 36}  # (k % 12 == 0 made 48 a fifth: all five queued behind a low one, one was refused)
    priorities = [HIGH if k in high else LOW for k in range(callers)]
    port = free_port()
    offload = {"mode": "threshold", "metric": "max_prob", "threshold": 0.0, "max_queue_depth": depth}
    doc = profile_doc(zoo, None, offload=offload, api_port=port, samples=False,
                      batching={"max_batch_size": 1, "max_queue_delay_ms": 0})
    doc["models"]["mnist1d"]["name"] = LARGE
    doc["broker"] = {"host": "127.0.0.1", "port": free_port()}
    profile = tmp_path / "agent.yaml"
    profile.write_text(yaml.safe_dump(doc))
    log = tmp_path / "agent.log"
    agent = subprocess.Popen([str(BIN / "fedge-agent"), "run", "--profile", str(profile)],
                             stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        assert eventually(lambda: _ready(port), timeout=60), log.read_text()
        before = _rss_kb(agent.pid)
        x, _ = sample_inputs(callers, seed=3)
        started = threading.Barrier(callers)

        def call(k: int) -> tuple[int, dict[str, Any] | str, float]:
            started.wait()
            sent = time.monotonic()
            status, answer = http_call(port, "POST", "/v2/models/mnist1d/infer",
                                       _request_body(x[k].tolist(), priorities[k]))
            return status, answer, (time.monotonic() - sent) * 1000

        with ThreadPoolExecutor(callers) as pool:
            answers = list(pool.map(call, range(callers)))
        grown_kb = _rss_kb(agent.pid) - before
        metrics = http_call(port, "GET", "/metrics")[1]
    finally:
        stop(agent)
    assert all(ms < DEADLINE_MS for _, _, ms in answers), [ms for _, _, ms in answers]
    by_status = Counter(status for status, _, _ in answers)
    assert set(by_status) <= {200, 503} and by_status[503] > 0, by_status  # 10x over: most are shed
    for (status, answer, _), priority in zip(answers, priorities, strict=True):
        if priority == HIGH:
            assert status == 200, answer
        if status == 503:
            assert isinstance(answer, dict) and answer["code"] == "overloaded", answer
    assert isinstance(metrics, str)
    assert f'fedge_errors_total{{code="overloaded",task="mnist1d"}} {by_status[503]}.0' in metrics, metrics
    assert grown_kb < 32 * 1024, f"the agent grew by {grown_kb} kB under the burst"
    assert "Traceback" not in log.read_text()


def _ready(port: int) -> bool:
    try:
        return http_call(port, "GET", "/v2/health/ready")[0] == 200
    except OSError:
        return False


def test_a_worker_given_ten_times_its_queue_at_once_sheds_low_priorities_and_answers_the_high(
        zoo: Path, broker: Mosquitto, tmp_path: Path) -> None:
    """The worker is paused (SIGSTOP) while 160 requests queue for it at the broker, then resumed: they all
    arrive at once at a queue of 16."""
    total, max_queue = 160, 16
    priorities = [HIGH if i % 20 == 0 else LOW for i in range(total)]
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([str(BIN / "fedge-cloud"), "serve", "--broker", broker.url, "--workers", "1",
                              "--max-queue", str(max_queue), "--max-batch", "4", "--store",
                              str(zoo / "state" / "models"), "--registry", str(tmp_path / "registry.db")],
                             stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        with client(broker, "caller") as caller:
            reports = Inbox(caller)
            subscribe(caller, Topics().worker_reports, qos=0)
            worker = _started_worker(log)
            reports.get(timeout=60)  # the worker is subscribed
            replies: list[tuple[bytes, InferReply | ErrorReply, float]] = []
            caller.message_callback_add("test/replies", lambda _c, _u, msg: replies.append(
                (bytes(msg.properties.CorrelationData), decode_reply(msg.payload, msg.properties),  # type: ignore[union-attr]
                 time.monotonic())))
            subscribe(caller, "test/replies")
            before = _rss_kb(worker)
            os.kill(worker, signal.SIGSTOP)
            try:
                x, _ = sample_inputs(total, seed=4)
                sent = [_send(caller, i, x[i], priorities[i]) for i in range(total)]
                for _, info in sent:
                    info.wait_for_publish(10)
            finally:
                os.kill(worker, signal.SIGCONT)
            eventually(lambda: len(replies) >= total, timeout=60)
            time.sleep(0.5)  # a second answer to any request would arrive now
            grown_kb = _rss_kb(worker) - before
            depths = [json.loads(m.payload).get("queue_depth", 0) for m in list(reports.messages.queue)]
    finally:
        stop(serve)
    sent_at = {f"{i}".encode(): at for i, (at, _) in enumerate(sent)}
    assert Counter(c for c, _, _ in replies) == Counter(sent_at.keys()), "not exactly one answer per request"
    outcomes: Counter[str] = Counter()
    for correlation, reply, arrived in replies:
        assert (arrived - sent_at[correlation]) * 1000 < DEADLINE_MS
        i = int(correlation)
        if isinstance(reply, ErrorReply):
            assert reply.code.value == "overloaded" and priorities[i] == LOW, (i, reply)
            outcomes["overloaded"] += 1
        else:
            assert isinstance(reply, InferReply)
            outcomes["answered"] += 1
    assert outcomes["overloaded"] > total // 2, outcomes  # most of ten times the queue is shed
    assert max(depths) <= max_queue, depths
    assert grown_kb < 32 * 1024, f"the worker grew by {grown_kb} kB under the burst"
    assert "Traceback" not in log.read_text()


def _started_worker(log: Path) -> int:
    """The pid of the one worker `fedge-cloud serve` started (from its log)."""
    found: list[int] = []

    def started() -> bool:
        match = re.search(r"started 1 workers? \(pids \[(\d+)\]\)", log.read_text())
        if match:
            found.append(int(match.group(1)))
        return bool(match)

    assert eventually(started, timeout=60), log.read_text()
    return found[0]


def _send(caller: mqtt.Client, i: int, x: np.ndarray, priority: int) -> tuple[float, mqtt.MQTTMessageInfo]:
    request = InferRequest("mnist1d", {"input": x[None, :].astype(np.float32)}, priority=priority,
                           timeout_ms=DEADLINE_MS)
    payload, props = encode_request(request, response_topic="test/replies", correlation_data=f"{i}".encode())
    return time.monotonic(), caller.publish(Topics().infer("mnist1d"), payload, qos=1, properties=props)
