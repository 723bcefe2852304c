"""`fedge-agent run` and `fedge-agent infer` as a user runs them: real processes, real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent.confidence import confidence, softmax
from agent.model_store import ModelStore
from agent.mqtt_client import TlsFiles
from agent.protocol import Topics
from agent.session import open_session
from cloud.local.mosquitto import Mosquitto, ServerTls, free_port
from tests.agent_support import cloud_answer, profile_doc, sample_inputs, train_small_zoo
from tests.mqtt_helpers import Inbox, client, subscribe
from tests.responder import responding
from tests.tls_certs import CertSet, make_certs

FEDGE_AGENT = str(Path(sys.executable).with_name("fedge-agent"))
OFFLOAD = {"mode": "threshold", "metric": "max_prob", "threshold": 0.8}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("agent-cli")
    train_small_zoo(root / "state" / "models")
    return root


def write_profile(zoo: Path, broker: Mosquitto, port: int, **broker_keys: Any) -> Path:
    """A profile offloading mnist1d through ``broker``; ``broker_keys`` go into its broker section."""
    doc = profile_doc(zoo, broker, offload=OFFLOAD, api_port=port)
    doc["broker"].update(broker_keys)
    path = zoo / f"profile-{port}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def infer_command(profile: Path, data: Path, *flags: str) -> list[str]:
    return [FEDGE_AGENT, "infer", "--profile", str(profile), "--task", "mnist1d", "--input", str(data), *flags]


def fedge_agent(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, env=env)


def infer(profile: Path, data: Path, *flags: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return fedge_agent(infer_command(profile, data, *flags), env)


def unconfident_input(zoo: Path, path: Path) -> Path:
    """A .npy file with the MNIST-1D input the edge model is least sure of (well under OFFLOAD's threshold)."""
    x, _ = sample_inputs(200)
    session = open_session(ModelStore(zoo / "state" / "models").get("mnist1d", "mnist1d-edge").model_path)
    conf = confidence(softmax(session.run(None, {"input": x})[0]), "max_prob")
    least = int(np.argmin(conf))
    assert conf[least] < OFFLOAD["threshold"]
    np.save(path, x[least:least + 1])
    return path


@pytest.fixture
def device_status(broker: Mosquitto) -> Iterator[Inbox]:
    """What the agent ``test-dev`` says about itself on ``broker`` (online, offline)."""
    with client(broker, "watcher") as watcher:
        inbox = Inbox(watcher)
        subscribe(watcher, Topics().device_status("test-dev"))
        yield inbox


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


def test_infer_from_a_npy_file_says_why_it_answers_locally(zoo: Path, broker: Mosquitto, tmp_path: Path) -> None:
    x, _ = sample_inputs(2)
    np.save(tmp_path / "x.npy", x)
    result = infer(write_profile(zoo, broker, free_port()), tmp_path / "x.npy")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outputs"][0]["shape"] == [2, 10] and doc["parameters"]["source"] == "edge"
    # no cloud runs on this broker: the (possibly degraded) local answer comes with the reason
    assert f"not offloading: no cloud status on {Topics().cloud_status}" in result.stderr


def test_infer_waits_for_the_cloud_status_and_offloads_an_unconfident_input(
        zoo: Path, broker: Mosquitto, device_status: Inbox, tmp_path: Path) -> None:
    data = unconfident_input(zoo, tmp_path / "m1.npy")
    with responding(broker, cloud_answer(ModelStore(zoo / "state" / "models"))) as cloud, \
            client(broker, "coordinator") as coordinator:
        status = Topics().cloud_status
        coordinator.publish(status, b"", qos=1, retain=True).wait_for_publish(5)  # as if the cloud just started
        agent = subprocess.Popen(infer_command(write_profile(zoo, broker, free_port()), data),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert device_status.get(timeout=30).payload == b"online"
            # the status comes only after the agent's CONNACK: an agent that does not wait for it stays local
            coordinator.publish(status, json.dumps({"healthy": True, "overloaded": False}), qos=1,
                                retain=True).wait_for_publish(5)
            out, err = agent.communicate(timeout=60)
        finally:
            agent.kill()
    assert agent.returncode == 0, err
    parameters = json.loads(out)["parameters"]
    assert (parameters["source"], parameters["degraded"]) == ("cloud", False), err
    assert cloud.served == 1 and "not offloading" not in err


@pytest.mark.parametrize(("name", "content", "words"), [
    ("x.json", "[[1, 2, 3]]", "shape_mismatch"),
    ("x.json", "{nope", "x.json: not valid JSON: Expecting"),
    ("x.json", "[[1, 2], [3]]", "x.json: a ragged list"),
    ("x.json", '[["a", "b"]]', "x.json: holds something other than numbers"),
    ("x.npy", "not an array at all", "x.npy: not a NumPy .npy file"),
])
def test_infer_bad_input_is_a_clear_error(zoo: Path, broker: Mosquitto, tmp_path: Path, name: str, content: str,
                                          words: str) -> None:
    (tmp_path / name).write_text(content)
    result = infer(write_profile(zoo, broker, free_port()), tmp_path / name)
    assert result.returncode == 2
    assert words in result.stderr and "Traceback" not in result.stderr
    assert "pickled" not in result.stderr and "inhomogeneous" not in result.stderr


@pytest.mark.parametrize("timeout", ["0", "-5", "soon"])
def test_infer_refuses_a_timeout_below_one_millisecond(zoo: Path, broker: Mosquitto, tmp_path: Path,
                                                        timeout: str) -> None:
    np.save(tmp_path / "x.npy", sample_inputs(1)[0])
    result = infer(write_profile(zoo, broker, free_port()), tmp_path / "x.npy", "--timeout-ms", timeout)
    assert result.returncode == 2
    assert "argument --timeout-ms: " in result.stderr
    assert ("not a whole number" if timeout == "soon" else "give at least 1") in result.stderr


def test_infer_with_an_unreadable_password_file_is_one_line_like_run(zoo: Path, broker: Mosquitto,
                                                                     tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", sample_inputs(1)[0])
    profile = write_profile(zoo, broker, free_port(), username="test-dev", password_file=str(tmp_path / "no-pw"))
    result = infer(profile, tmp_path / "x.npy")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"fedge-agent infer: cannot start: broker.password_file: cannot read"
                                     f" {tmp_path / 'no-pw'}: No such file or directory")


def test_infer_names_an_unreachable_broker_once_and_answers_locally(zoo: Path, broker: Mosquitto,
                                                                    tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", sample_inputs(1)[0])
    closed = 1  # nothing listens there, and no client's own source port can be it (a free_port() can be taken)
    result = infer(write_profile(zoo, broker, free_port()), tmp_path / "x.npy", "--broker", f"mqtt://127.0.0.1:{closed}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parameters"]["source"] == "edge"
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{closed}: connection refused" in warnings[0], result.stderr
    assert f"no connection to the MQTT broker at 127.0.0.1:{closed}" in result.stderr
    assert "paho" not in result.stderr


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Mosquitto, CertSet]]:
    """A TLS broker with a throwaway CA that asks for no client certificate."""
    certs = make_certs(tmp_path / "certs")
    with Mosquitto(tmp_path / "tls-broker", tls=ServerTls(certs.ca_file, certs.server_cert, certs.server_key)) as tls:
        yield tls, certs


def test_mqtts_broker_url_turns_tls_on_with_the_system_cas(
        zoo: Path, broker: Mosquitto, tls_server: tuple[Mosquitto, CertSet], tmp_path: Path) -> None:
    tls, certs = tls_server
    np.save(tmp_path / "x.npy", sample_inputs(1)[0])
    profile = write_profile(zoo, broker, free_port())  # no tls section
    system_cas = {**os.environ, "SSL_CERT_FILE": str(certs.ca_file)}  # OpenSSL's default CA store is this CA
    with client(tls, "watcher", tls=TlsFiles(certs.ca_file)) as watcher:
        inbox = Inbox(watcher)
        subscribe(watcher, Topics().device_status("test-dev"))
        result = infer(profile, tmp_path / "x.npy", "--broker", f"mqtts://localhost:{tls.port}", env=system_cas)
        assert result.returncode == 0, result.stderr
        assert inbox.get(timeout=10).payload == b"online", result.stderr


def test_mqtt_broker_url_turns_the_profiles_tls_off(zoo: Path, broker: Mosquitto, device_status: Inbox,
                                                    tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", sample_inputs(1)[0])
    profile = write_profile(zoo, broker, free_port(), tls={"ca_file": str(tmp_path / "absent-ca.pem")})
    result = infer(profile, tmp_path / "x.npy", "--broker", f"mqtt://{broker.host}:{broker.port}")
    assert result.returncode == 0, result.stderr
    assert device_status.get(timeout=10).payload == b"online"


@pytest.mark.parametrize("bad", ["ca_file", "key_file"])
def test_run_names_a_tls_file_it_cannot_read(zoo: Path, broker: Mosquitto, tmp_path: Path, bad: str) -> None:
    certs = make_certs(tmp_path / "certs")
    tls = {"ca_file": str(certs.ca_file), "cert_file": str(certs.client_cert), "key_file": str(certs.client_key)}
    tls[bad] = str(tmp_path / "missing.pem")
    profile = write_profile(zoo, broker, free_port(), tls=tls)
    result = fedge_agent([FEDGE_AGENT, "run", "--profile", str(profile)])
    assert result.returncode == 2
    what = {"ca_file": "CA file", "key_file": "client key"}[bad]
    assert result.stderr.strip().endswith(f"fedge-agent run: cannot start: TLS {what} {tmp_path / 'missing.pem'}:"
                                          " cannot read it: No such file or directory")


def test_run_with_a_missing_model_says_so(tmp_path: Path, broker: Mosquitto) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(profile_doc(tmp_path, broker, api_port=free_port())))
    result = fedge_agent([FEDGE_AGENT, "run", "--profile", str(profile)])
    assert result.returncode == 2
    assert "no model mnist1d/mnist1d-edge" in result.stderr and "Traceback" not in result.stderr
