"""A worker that leaves the share group answers every request the broker had given it, and every answer arrives.

Real Mosquitto, real workers (threads in this process, real ONNX Runtime sessions). What a loaded machine does
by chance is done here on purpose: a network thread that stalls while its worker leaves, a broker paused with
SIGSTOP while a client still has answers to send.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from agent.mqtt_client import Unacknowledged
from agent.protocol import InferRequest, Topics, encode_request
from cloud.local.mosquitto import Mosquitto
from cloud.serving.reports import WorkerReports
from cloud.serving.worker import Worker, WorkerSettings
from tests.conftest import USERS
from tests.mqtt_helpers import Inbox, client, eventually, subscribe
from tests.release_support import TASK, linear_cloud_store
from tests.serving_support import running_worker

REPLIES = "test/replies"


def _answered_by(caller: mqtt.Client) -> set[bytes]:
    """The correlation data of every reply ``caller`` receives on REPLIES from now on."""
    answered: set[bytes] = set()
    caller.on_message = lambda _c, _u, msg: answered.add(bytes(msg.properties.CorrelationData))  # type: ignore[union-attr]
    subscribe(caller, REPLIES)
    return answered


def _send_request(caller: mqtt.Client, i: int) -> mqtt.MQTTMessageInfo:
    payload, props = encode_request(InferRequest(TASK, {"input": np.zeros((1, 40), np.float32)}, timeout_ms=60_000),
                                    response_topic=REPLIES, correlation_data=f"{i}".encode())
    return caller.publish(Topics().infer(TASK), payload, qos=1, properties=props)


def _settings(store: Path, broker: Mosquitto, worker_id: str, **extra: Any) -> WorkerSettings:
    return WorkerSettings(store=store, broker=broker.settings, worker_id=worker_id, status_interval_s=0.2, **extra)


def test_a_worker_that_stops_answers_every_request_the_broker_sent_it(tmp_path: Path, broker: Mosquitto) -> None:
    """Workers leave one after another while requests keep coming (a rolling restart, one host leaving)."""
    store = linear_cloud_store(tmp_path / "store")
    total, rounds = 3000, 6
    with client(broker, "caller") as caller, running_worker(_settings(store, broker, "stays"), broker):
        answered = _answered_by(caller)

        def stream() -> None:
            for i in range(total):
                _send_request(caller, i)
                if i % 50 == 0:
                    time.sleep(0.005)

        streaming = threading.Thread(target=stream)
        streaming.start()
        for n in range(rounds):
            with running_worker(_settings(store, broker, f"leaves-{n}"), broker):
                time.sleep(0.05)
        streaming.join(60)
        eventually(lambda: len(answered) == total, timeout=30)
    assert len(answered) == total, f"{total - len(answered)} requests never answered"


class StallsWhileLeaving(Worker):
    """A worker whose network thread holds its first request until told, and stalls for a second once it is
    leaving, as a GC pause or a starved core would: the broker meanwhile holds hundreds of requests for it."""

    def __init__(self, settings: WorkerSettings) -> None:
        super().__init__(settings)
        self.released = threading.Event()
        self._since_stop = 0

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        self.released.wait(10)
        if self._stop.is_set():
            self._since_stop += 1
            if self._since_stop == 60:
                time.sleep(1.0)
        super()._on_message(c, u, msg)


def test_a_worker_whose_network_thread_stalls_as_it_leaves_still_answers_all_the_broker_held(
        tmp_path: Path, broker: Mosquitto) -> None:
    """No quiet spell means the broker has nothing more for a leaving worker: only its fence coming back does."""
    store = linear_cloud_store(tmp_path / "store")
    total = 600
    with client(broker, "caller") as caller:
        answered = _answered_by(caller)
        with running_worker(_settings(store, broker, "stalls"), broker, StallsWhileLeaving) as worker:
            assert isinstance(worker, StallsWhileLeaving)
            sent = [_send_request(caller, i) for i in range(total)]
            for info in sent:  # the broker has them all: 20 in flight to the held worker, the rest queued for it
                info.wait_for_publish(10)
            worker.stop()
            worker.released.set()
        eventually(lambda: len(answered) == total, timeout=30)
    assert len(answered) == total, f"{total - len(answered)} of {total} requests never answered"


def test_workers_may_fence_their_session_under_the_generated_acl(tmp_path: Path, acl_broker: Mosquitto,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The ACL `fedge-cloud acl` writes lets a worker read its own report topic, so it leaves by its fence, and
    the coordinators hear that it left."""
    store = linear_cloud_store(tmp_path / "store")
    as_worker = replace(acl_broker.settings, username="worker", password=USERS["worker"])
    worker = Worker(WorkerSettings(store=store, broker=as_worker, worker_id="acl-worker", status_interval_s=0.2))
    with client(acl_broker, "coordinator", username="coordinator", password=USERS["coordinator"]) as coordinator, \
            caplog.at_level(logging.WARNING, logger="cloud.serving.worker"):
        reports = Inbox(coordinator)
        subscribe(coordinator, worker.status_topic)
        running = threading.Thread(target=worker.run)
        running.start()
        assert "leaving" not in json.loads(reports.get(10).payload)
        worker.stop()
        running.join(15)
        assert not running.is_alive()
        assert eventually(lambda: any("leaving" in json.loads(m.payload) for m in list(reports.messages.queue)))
    assert not [r.getMessage() for r in caplog.records if r.name == "cloud.serving.worker"]


def test_a_client_leaves_only_once_the_broker_acknowledged_every_publish(broker: Mosquitto) -> None:
    """paho sends 20 QoS 1 messages at a time and drops the rest at disconnect: Unacknowledged waits them out."""
    assert broker.pid is not None
    total = 200
    with client(broker, "listener") as listener:
        got: set[bytes] = set()
        listener.on_message = lambda _c, _u, msg: got.add(msg.payload)
        subscribe(listener, "test/answers")
        with client(broker, "sender") as sender:
            unacknowledged = Unacknowledged()
            os.kill(broker.pid, signal.SIGSTOP)  # as a broker too busy to acknowledge would
            try:
                for i in range(total):
                    unacknowledged.add(sender.publish("test/answers", f"{i}".encode(), qos=1))
            finally:
                threading.Timer(0.5, os.kill, (broker.pid, signal.SIGCONT)).start()
            assert unacknowledged.wait(10) == 0
        eventually(lambda: len(got) == total, timeout=10)
    assert len(got) == total, f"{total - len(got)} of {total} publishes lost at disconnect"


def test_a_leaving_report_drops_its_worker_from_the_cloud_status_at_once() -> None:
    """Coordinators stop counting a worker on its last report, not three report intervals later."""
    reports = WorkerReports(fresh_for_s=3600)
    for report in ({"worker_id": "a", "queue_depth": 3}, {"worker_id": "b"}, {"worker_id": "a", "leaving": "x1"}):
        reports.add(json.dumps(report).encode())
    assert set(reports.fresh()) == {"b"}
