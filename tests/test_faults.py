"""Faults under load, with the real processes: `fedge-cloud serve`, `fedge-agent run` and Mosquitto, each killed
with SIGKILL while 64 requests are in flight. Every HTTP request gets its one answer (degraded allowed)."""

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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.process_tree import children, stop
from cloud.local.mosquitto import Mosquitto, free_port
from tests.agent_support import profile_doc, sample_inputs, train_small_zoo
from tests.http_support import http_call

BIN = Path(sys.executable).parent
IN_FLIGHT, ROUNDS = 64, 6  # 64 callers at once, each sending ROUNDS requests one after another


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    train_small_zoo(root / "state" / "models")
    return root


def _serve(zoo: Path, broker: Mosquitto, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "fedge-cloud"), "serve", "--broker", broker.url, "--workers", "2",
                             "--store", str(zoo / "state" / "models"), "--registry", str(log.with_suffix(".db"))],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _agent(zoo: Path, broker: Mosquitto, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`fedge-agent run` offloading every request (threshold 1.0), with room for the whole burst."""
    offload = {"mode": "threshold", "metric": "max_prob", "threshold": 1.0, "default_deadline_ms": 3000,
               "audit_rate": 0.0, "max_inflight": 256, "max_queue_depth": 256}
    doc = profile_doc(zoo, broker, offload=offload, api_port=port, samples=False)
    profile = log.with_suffix(".yaml")
    profile.write_text(yaml.safe_dump(doc))
    return subprocess.Popen([str(BIN / "fedge-agent"), "run", "--profile", str(profile)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _infer(port: int, row: list[float]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 40], "datatype": "FP32", "data": row}]}).encode()
    status, doc = http_call(port, "POST", "/v2/models/mnist1d/infer", body)
    assert isinstance(doc, dict), doc
    return status, doc


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _cloud_answers(port: int, row: list[float]) -> bool:
    try:
        status, doc = _infer(port, row)
    except OSError:
        return False
    return status == 200 and doc["parameters"]["source"] == "cloud"


@pytest.fixture
def fleet(zoo: Path, broker: Mosquitto, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`fedge-cloud serve` with 2 workers and one `fedge-agent run`, the agent's answers coming from the cloud."""
    serve = _serve(zoo, broker, tmp_path / "serve.log")
    port = free_port()
    agent = _agent(zoo, broker, port, tmp_path / "agent.log")
    try:
        row = sample_inputs(1)[0].ravel().tolist()
        _until(lambda: _cloud_answers(port, row), "the agent did not get cloud answers: see " + str(tmp_path), 90)
        yield serve, port
    finally:
        stop(agent)
        stop(serve)


def _burst(port: int, fault: Callable[[], None]) -> Counter[str]:
    """IN_FLIGHT callers x ROUNDS requests, ``fault`` once all are in flight; the answers by where they came from."""
    x, _ = sample_inputs(IN_FLIGHT * ROUNDS, seed=5)
    started = threading.Barrier(IN_FLIGHT + 1)

    def caller(k: int) -> list[str]:
        started.wait()
        kinds = []
        for r in range(ROUNDS):
            status, doc = _infer(port, x[k * ROUNDS + r].tolist())
            assert status == 200, doc  # a degraded local answer, never an error, for a request with time left
            kinds.append("degraded" if doc["parameters"]["degraded"] else doc["parameters"]["source"])
        return kinds

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures = [pool.submit(caller, k) for k in range(IN_FLIGHT)]
        started.wait()
        time.sleep(0.05)
        fault()
        answers = Counter(kind for f in futures for kind in f.result(timeout=120))
    assert sum(answers.values()) == IN_FLIGHT * ROUNDS, answers  # one answer per request, none lost
    return answers


def test_the_broker_killed_with_64_requests_in_flight_leaves_none_unanswered(
        fleet: tuple[subprocess.Popen[bytes], int], broker: Mosquitto) -> None:
    _, port = fleet
    answers = _burst(port, broker.kill)
    assert answers["degraded"] > 0, answers  # the cloud went away mid-burst: local answers, marked
    broker.start()
    row = sample_inputs(1, seed=6)[0].ravel().tolist()
    _until(lambda: _cloud_answers(port, row), "offloading did not resume after the broker came back", 60)


def test_a_worker_killed_under_a_64_request_burst_is_replaced_and_nothing_is_lost(
        fleet: tuple[subprocess.Popen[bytes], int], tmp_path: Path) -> None:
    serve, port = fleet
    log = tmp_path / "serve.log"
    started = re.search(r"started 2 workers \(pids \[(\d+), (\d+)\]\)", log.read_text())
    assert started, log.read_text()
    victim = int(started.group(1))
    answers = _burst(port, lambda: os.kill(victim, signal.SIGKILL))
    assert answers["cloud"] > 0, answers
    _until(lambda: f"(pid {victim}) exited with -9; started a new one" in log.read_text(),
           "the killed worker was not replaced", 60)
    row = sample_inputs(1, seed=7)[0].ravel().tolist()
    _until(lambda: _cloud_answers(port, row), "the cloud did not answer again", 60)
    assert serve.poll() is None and victim not in children(serve.pid)  # the coordinator serves on, the victim reaped
