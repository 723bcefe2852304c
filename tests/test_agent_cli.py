"""`fedge-agent run` and `fedge-agent infer` as a user runs them: real processes, real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.protocol import Topics
from cloud.mosquitto import Mosquitto, free_port
from tests.agent_support import profile_doc, sample_inputs, train_small_zoo
from tests.mqtt_helpers import Inbox, client, subscribe

FEDGE_AGENT = str(Path(sys.executable).with_name("fedge-agent"))
OFFLOAD = {"mode": "threshold", "metric": "max_prob", "threshold": 0.8}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("agent-cli")
    train_small_zoo(root / "state" / "models")
    return root


def write_profile(zoo: Path, broker: Mosquitto, port: int) -> Path:
    path = zoo / f"profile-{port}.yaml"
    path.write_text(yaml.safe_dump(profile_doc(zoo, broker, offload=OFFLOAD, api_port=port)))
    return path


def test_run_serves_http_and_stops_cleanly_on_sigterm(zoo: Path, broker: Mosquitto) -> None:
    port = free_port()
    profile = write_profile(zoo, broker, port)
    with client(broker, "watcher") as watcher:
        inbox = Inbox(watcher)
        subscribe(watcher, Topics().device_status("test-dev"))
        daemon = subprocess.Popen([FEDGE_AGENT, "run", "--profile", str(profile)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert daemon.stdout is not None
            assert "ready" in daemon.stdout.readline()
            x, _ = sample_inputs(1)
            body = json.dumps({"inputs": [{"name": "input", "shape": [1, 40], "datatype": "FP32",
                                           "data": x.ravel().tolist()}]}).encode()
            with urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{port}/v2/models/mnist1d/infer", data=body, method="POST"), timeout=10) as resp:
                assert json.loads(resp.read())["outputs"][0]["shape"] == [1, 10]
            assert inbox.get(timeout=10).payload == b"online"
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(15) == 0
        finally:
            daemon.kill()
        assert inbox.get(timeout=5).payload == b"offline"
    assert "Traceback" not in (daemon.stderr.read() if daemon.stderr else "")


def test_infer_from_a_npy_file(zoo: Path, broker: Mosquitto, tmp_path: Path) -> None:
    x, _ = sample_inputs(2)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run([FEDGE_AGENT, "infer", "--profile", str(write_profile(zoo, broker, free_port())),
                             "--task", "mnist1d", "--input", str(tmp_path / "x.npy")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outputs"][0]["shape"] == [2, 10] and doc["parameters"]["source"] == "edge"


@pytest.mark.parametrize(("content", "words"), [("[[1, 2, 3]]", "shape_mismatch"), ("{nope", "Expecting")])
def test_infer_bad_input_is_a_clear_error(zoo: Path, broker: Mosquitto, tmp_path: Path, content: str, words: str) -> None:
    (tmp_path / "x.json").write_text(content)
    result = subprocess.run([FEDGE_AGENT, "infer", "--profile", str(write_profile(zoo, broker, free_port())),
                             "--task", "mnist1d", "--input", str(tmp_path / "x.json")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert words in result.stderr and "Traceback" not in result.stderr


def test_run_with_a_missing_model_says_so(tmp_path: Path, broker: Mosquitto) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(profile_doc(tmp_path, broker, api_port=free_port())))
    result = subprocess.run([FEDGE_AGENT, "run", "--profile", str(profile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no model mnist1d/mnist1d-edge" in result.stderr and "Traceback" not in result.stderr
