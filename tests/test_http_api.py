"""The agent's HTTP API (KServe Open Inference Protocol v2) called by clients fedge did not write.

urllib and http.client as a user's script calls them; every request gets its one answer, and a
refused one leaves the connection usable or closed, never reset under the client.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent.agent import Agent
from agent.http_api import ApiServer
from agent.latch import Latch
from agent.model_store import ModelStore
from agent.profile import parse_profile
from agent.steps import CloudWait, Steps
from cloud.local.mosquitto import Mosquitto, free_port
from tests.agent_support import cloud_answer, make_profile, profile_doc, sample_inputs, train_small_zoo
from tests.http_support import http_call
from tests.mqtt_helpers import eventually
from tests.responder import responding


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory whose model store holds small trained MNIST-1D models."""
    root = tmp_path_factory.mktemp("http")
    train_small_zoo(root / "state" / "models")
    return root


def _good(x: np.ndarray, name: str = "input") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def _announce_oversize(port: int) -> int:
    """Headers announcing a 5 MiB body and ``Expect: 100-continue``, as curl sends them; the body never comes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/v2/models/mnist1d/infer")
    conn.putheader("Content-Length", str(5 << 20))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_http_api_speaks_oip_v2_and_refuses_bad_bodies(zoo: Path) -> None:
    port = free_port()
    x, _ = sample_inputs(1)
    with Agent(make_profile(zoo, None, api_port=port)):
        assert http_call(port, "GET", "/v2/health/live") == (200, {"live": True})
        assert http_call(port, "GET", "/v2/health/ready") == (200, {"ready": True})
        status, meta = http_call(port, "GET", "/v2/models/mnist1d")
        declared = meta["inputs"][0]  # type: ignore[index]
        assert status == 200 and declared["shape"] == [-1, 40] and declared["datatype"] == "FP32"
        # a client that builds its request from the metadata is served
        good = {"inputs": [{"name": declared["name"], "shape": [1, 40], "datatype": declared["datatype"],
                            "data": x.ravel().tolist()}]}
        status, doc = http_call(port, "POST", "/v2/models/mnist1d/infer", json.dumps(good).encode())
        assert status == 200 and doc["outputs"][0]["shape"] == [1, 10]  # type: ignore[index]
        assert doc["parameters"]["source"] == "edge"  # type: ignore[index]
        cases = [
            ({**good, "inputs": [{**good["inputs"][0], "shape": [1, 39], "data": [0.0] * 39}]}, 400, "shape_mismatch"),
            ({**good, "inputs": [{**good["inputs"][0], "datatype": "INT32", "data": [0] * 40}]}, 400, "unsupported_dtype"),
        ]
        for body, want_status, code in cases:
            status, doc = http_call(port, "POST", "/v2/models/mnist1d/infer", json.dumps(body).encode())
            assert (status, doc["code"]) == (want_status, code), doc  # type: ignore[index]
        status, doc = http_call(port, "POST", "/v2/models/digits/infer", json.dumps(good).encode())
        assert status == 404 and "unknown model" in doc["error"]  # type: ignore[index]
        status, doc = http_call(port, "POST", "/v2/models/mnist1d/infer", b"{not json")
        assert status == 400 and "not valid JSON" in doc["error"]  # type: ignore[index]
        assert _announce_oversize(port) == 413  # refused from the headers, before the body is sent
        status, text = http_call(port, "GET", "/metrics")
        assert status == 200 and 'fedge_requests_total{source="edge",task="mnist1d"} 1.0' in str(text)
        assert 'fedge_errors_total{code="shape_mismatch",task="mnist1d"} 1.0' in str(text)


def _method_status(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
                   ) -> tuple[int, str | None, dict[str, Any]]:
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    resp = conn.getresponse()
    return resp.status, resp.getheader("Allow"), json.loads(resp.read())


def test_http_api_answers_wrong_methods_with_405_and_serves_server_metadata_and_model_ready(zoo: Path) -> None:
    port = free_port()
    with Agent(make_profile(zoo, None, api_port=port)):
        status, server = http_call(port, "GET", "/v2")
        assert status == 200 and server["name"] == "fedge-agent" and server["extensions"] == ["binary_tensor_data"]  # type: ignore[index]
        assert isinstance(server["version"], str) and server["version"]  # type: ignore[index]
        assert http_call(port, "GET", "/v2/models/mnist1d/ready") == (200, {"name": "mnist1d", "ready": True})
        status, doc = http_call(port, "GET", "/v2/models/digits/ready")
        assert (status, doc["code"]) == (404, "unknown_task")  # type: ignore[index]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        wrong = [("GET", "/v2/models/mnist1d/infer", None, "POST"),
                 ("GET", "/v2/models/mnist1d/feedback", None, "POST"),
                 ("PUT", "/v2/models/mnist1d/infer", b'{"inputs": []}', "POST"),
                 ("POST", "/v2/health/live", b'{"live": false}', "GET"), ("DELETE", "/v2/models/mnist1d", None, "GET")]
        for method, path, body, allow in wrong:
            status, allowed, doc = _method_status(conn, method, path, body)
            assert (status, allowed) == (405, allow) and method in doc["error"], (method, path, doc)
            # an unread body is not taken for the next request on the same connection
            assert _method_status(conn, "GET", "/v2/health/ready")[::2] == (200, {"ready": True})
        status, allowed, doc = _method_status(conn, "POST", "/v2/models/mnist1d/explain", b"{}")
        assert (status, allowed, doc["code"]) == (404, None, "not_found") and "no such endpoint" in doc["error"]
        assert _method_status(conn, "GET", "/v2/health/ready")[::2] == (200, {"ready": True})
        conn.request("HEAD", "/v2/health/ready")  # a GET's headers, no body, and the connection carries on
        head = conn.getresponse()
        assert (head.status, head.read(), int(head.headers["Content-Length"])) == (200, b"", len(b'{"ready":true}'))
        assert _method_status(conn, "GET", "/v2/health/ready")[::2] == (200, {"ready": True})
        conn.close()


def test_http_api_sets_tcp_nodelay_on_every_accepted_connection(zoo: Path) -> None:
    """Without it a keep-alive client waits ~40 ms for each response body (Nagle against delayed ACKs)."""
    port = free_port()
    with Agent(make_profile(zoo, None, api_port=port)) as agent, \
            socket.create_connection(("127.0.0.1", port)) as first, socket.create_connection(("127.0.0.1", port)) as second:
        assert agent.api is not None
        for caller in (first, second):
            caller.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert caller.recv(65536).startswith(b"HTTP/1.1 200")  # the server has accepted it
        accepted = [c.transport.get_extra_info("socket") for c in list(agent.api.connections)]
        assert len(accepted) == 2
        assert all(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0 for sock in accepted)
        assert first.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # the option is not a default


def test_a_body_over_the_limit_is_answered_413_to_a_client_that_sends_it_all(zoo: Path) -> None:
    """urllib sends the whole body before it reads: it must get the 413 and its JSON, not a broken pipe."""
    port = free_port()
    big = b" " * (5 << 20)  # over the 4 MiB payload limit
    with Agent(make_profile(zoo, None, api_port=port)) as agent:
        status, doc = http_call(port, "POST", "/v2/models/mnist1d/infer", big, {"Content-Type": "application/json"})
        assert status == 413 and doc["code"] == "bad_request" and "byte limit" in doc["error"], doc  # type: ignore[index]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v2/models/mnist1d/infer", body=big)
        resp = conn.getresponse()
        assert resp.status == 413 and "byte limit" in json.loads(resp.read())["error"]
        conn.request("POST", "/v2/models/mnist1d/infer", body=json.dumps(_good(sample_inputs(1)[0])))
        assert conn.getresponse().status == 200  # the refused body was read to its end: the connection serves on
        conn.close()
        assert agent.ready()


def test_an_input_the_model_does_not_declare_is_refused_with_the_names_it_does(zoo: Path) -> None:
    port = free_port()
    x, _ = sample_inputs(1)
    with Agent(make_profile(zoo, None, api_port=port)):
        status, doc = http_call(port, "POST", "/v2/models/mnist1d/infer", json.dumps(_good(x, "pixels")).encode())
        assert (status, doc["code"]) == (400, "bad_request"), doc  # type: ignore[index]
        assert "'input'" in doc["error"] and "'pixels'" in doc["error"]  # type: ignore[index]
        two = _good(x)
        two["inputs"].append({**two["inputs"][0], "name": "extra"})
        status, doc = http_call(port, "POST", "/v2/models/mnist1d/infer", json.dumps(two).encode())
        assert status == 400 and "'extra'" in doc["error"], doc  # type: ignore[index]
        assert http_call(port, "POST", "/v2/models/mnist1d/infer", json.dumps(_good(x)).encode())[0] == 200


def test_versioned_endpoints_serve_the_version_the_metadata_lists_and_replies_name_what_was_asked(zoo: Path) -> None:
    port = free_port()
    x, _ = sample_inputs(1)
    with Agent(make_profile(zoo, None, api_port=port)):
        status, meta = http_call(port, "GET", "/v2/models/mnist1d")
        assert status == 200 and meta["name"] == "mnist1d"  # type: ignore[index]
        version = meta["versions"][0]  # type: ignore[index]
        assert http_call(port, "GET", f"/v2/models/mnist1d/versions/{version}") == (200, meta)
        assert http_call(port, "GET", f"/v2/models/mnist1d/versions/{version}/ready") == (
            200, {"name": "mnist1d", "ready": True})
        body = json.dumps(_good(x)).encode()
        for path in ("/v2/models/mnist1d/infer", f"/v2/models/mnist1d/versions/{version}/infer"):
            status, doc = http_call(port, "POST", path, body)
            assert status == 200 and (doc["model_name"], doc["model_version"]) == ("mnist1d", version), doc  # type: ignore[index]
            assert doc["parameters"]["served_by"] == {"name": "mnist1d-edge", "version": version}  # type: ignore[index]
        status, doc = http_call(port, "POST", "/v2/models/mnist1d/versions/999/infer", body)
        assert (status, doc["code"]) == (404, "not_found") and f"serves version {version}" in doc["error"]  # type: ignore[index]
        status, doc = http_call(port, "GET", "/v2/models/digits/versions/1")
        assert (status, doc["code"]) == (404, "unknown_task")  # type: ignore[index]
        for path in ("/v2/models/mnist1d/versions", "/v2/models/mnist1d/versions//infer",
                     f"/v2/models/mnist1d/versions/{version}/infer/more"):
            status, doc = http_call(port, "POST", path, body)
            assert (status, doc["code"]) == (404, "not_found"), (path, doc)  # type: ignore[index]


def test_a_refused_chunked_body_closes_the_connection_so_it_is_never_read_as_a_request(zoo: Path) -> None:
    """Its end is unknown to a refusal that does not parse it: what it carries must not be served."""
    port = free_port()
    smuggled = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    with Agent(make_profile(zoo, None, api_port=port)), socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(b"POST /v2/models/mnist1d/explain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunk)
        answers = b""
        while part := sock.recv(65536):  # until the agent closes
            answers += part
    head, _, body = answers.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    assert head.startswith(b"HTTP/1.1 404") and len(body) == length, answers  # one answer, and nothing after it


def test_32_callers_connecting_at_once_are_all_answered(zoo: Path) -> None:
    """socketserver's backlog of 5 reset about a third of such a burst. 32: as many as the local queue holds
    (a local-only model's default depth); past it requests are answered 'overloaded' by design."""
    port = free_port()
    callers, each = 32, 8
    x, _ = sample_inputs(callers * each, seed=3)
    start = threading.Barrier(callers)

    def caller(k: int) -> list[int]:
        start.wait()
        return [http_call(port, "POST", "/v2/models/mnist1d/infer",
                          json.dumps(_good(x[k * each + r][None])).encode())[0] for r in range(each)]

    with Agent(make_profile(zoo, None, api_port=port)), ThreadPoolExecutor(callers) as pool:
        statuses = [s for answered in pool.map(caller, range(callers)) for s in answered]
    assert statuses == [200] * (callers * each)


def test_callers_that_hang_up_before_their_answer_cost_one_log_line_each_and_no_traceback(
        zoo: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """A request sent, then the connection reset (a client that timed out or was killed)."""
    port = free_port()
    x, _ = sample_inputs(1)
    body = json.dumps(_good(x)).encode()
    with caplog.at_level(logging.INFO, logger="agent.http_server"), Agent(make_profile(zoo, None, api_port=port)):
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"POST /v2/models/mnist1d/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        assert eventually(lambda: any("went away" in r.getMessage() for r in caplog.records))
        assert http_call(port, "POST", "/v2/models/mnist1d/infer", body)[0] == 200  # and it serves on
    assert "Traceback" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_content_length_that_is_not_ascii_digits_is_answered_400_naming_it(zoo: Path) -> None:
    """'²'.isdigit() is true and int('²') raises: the request was once dropped unanswered. RFC 9112 6.3: 400, close."""
    port = free_port()
    with Agent(make_profile(zoo, None, api_port=port)), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall("POST /v2/models/mnist1d/infer HTTP/1.1\r\nHost: x\r\nContent-Length: ²\r\n\r\n".encode("latin-1"))
        answer = b""
        while part := sock.recv(65536):  # until the agent closes
            answer += part
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400") and "Connection: close" in head, answer
    assert "Content-Length" in json.loads(body)["error"], body


def test_the_api_works_on_at_most_a_models_max_concurrent_requests_and_answers_every_caller(zoo: Path) -> None:
    """models.<task>.max_concurrent_requests bounds the requests in the works; the callers past it wait, none is lost."""
    doc = profile_doc(zoo, None, api_port=free_port())
    doc["models"]["mnist1d"]["max_concurrent_requests"] = 2
    with Agent(parse_profile(yaml.safe_dump(doc), "limited.yaml", env={})) as agent:
        lock, inside, peak = threading.Lock(), [0], [0]

        class Counting:
            """The agent, counting how many HTTP requests are between their first and last step at once."""

            limits = agent.limits
            ready, model_metadata, feedback, metrics_text, admission = (
                agent.ready, agent.model_metadata, agent.feedback, agent.metrics_text, agent.admission)

            def answer_steps(self, request: Any) -> Steps:
                with lock:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                try:
                    with contextlib.suppress(TimeoutError):  # holds its slot while the other callers arrive
                        yield CloudWait(Latch(), time.monotonic() + 0.2)
                    return (yield from agent.answer_steps(request))
                finally:
                    with lock:
                        inside[0] -= 1

        server = ApiServer(Counting(), "127.0.0.1", 0)
        server.start()
        try:
            x, _ = sample_inputs(6)
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda i: http_call(server.port, "POST", "/v2/models/mnist1d/infer",
                                                            json.dumps(_good(x[i:i + 1])).encode()), range(6)))
        finally:
            server.stop()
    assert [status for status, _ in answers] == [200] * 6, answers
    assert peak[0] == 2, peak


def test_requests_waiting_for_the_cloud_hold_no_worker_and_each_is_answered_at_its_deadline(
        zoo: Path, broker: Mosquitto) -> None:
    """Six callers offload at once to a cloud that never answers: all six wait at the cloud together (the
    server has 2 workers; a wait that held one would let at most 2 through), and each gets the local answer,
    marked degraded, when its deadline passes."""
    callers, port = 6, free_port()
    everything = {"mode": "threshold", "metric": "max_prob", "threshold": 1.0, "max_inflight": callers}
    x, _ = sample_inputs(callers, seed=5)
    with responding(broker, lambda rows: rows) as cloud, \
            Agent(make_profile(zoo, broker, offload=everything, api_port=port, samples=False)) as agent:
        assert agent.uplink is not None and agent.uplink.wait_connected(5)
        assert eventually(lambda: agent.uplink is not None and agent.uplink.cloud_status is not None)
        cloud.silent.set()
        with ThreadPoolExecutor(callers) as pool:
            calls = [pool.submit(http_call, port, "POST", "/v2/models/mnist1d/infer",
                                 json.dumps({**_good(x[i:i + 1]), "parameters": {"timeout_ms": 3000}}).encode())
                     for i in range(callers)]
            assert eventually(lambda: agent.uplink is not None and agent.uplink.inflight == callers, timeout=10)
            assert http_call(port, "GET", "/v2/health/ready")[0] == 200  # and the server answers meanwhile
            answers = [call.result() for call in calls]
    for status, doc in answers:
        assert status == 200 and isinstance(doc, dict), doc
        assert doc["parameters"]["source"] == "edge" and doc["parameters"]["degraded"], doc


def test_a_cloud_answer_before_the_deadline_lets_go_of_the_requests_timer(zoo: Path, broker: Mosquitto) -> None:
    """The deadline timer of an offloaded request is cancelled when the cloud answers first: left on the loop
    until a one-minute deadline, it held each answered request's steps (its input included) that long."""
    port, callers = free_port(), 3
    everything = {"mode": "threshold", "metric": "max_prob", "threshold": 1.0, "max_inflight": callers}
    x, _ = sample_inputs(callers, seed=6)
    with responding(broker, cloud_answer(ModelStore(zoo / "state" / "models"))), \
            Agent(make_profile(zoo, broker, offload=everything, api_port=port, samples=False)) as agent:
        assert agent.uplink is not None and agent.uplink.wait_connected(5)
        assert eventually(lambda: agent.uplink is not None and agent.uplink.cloud_status is not None)
        with ThreadPoolExecutor(callers) as pool:
            answers = list(pool.map(lambda i: http_call(port, "POST", "/v2/models/mnist1d/infer", json.dumps(
                {**_good(x[i:i + 1]), "parameters": {"timeout_ms": 60_000}}).encode()), range(callers)))
        assert [doc["parameters"]["source"] for _, doc in answers] == ["cloud"] * callers, answers
        assert agent.api is not None
        loop = agent.api._loop  # the server's own loop; asyncio keeps its timers in _scheduled
        assert eventually(lambda: not [t for t in loop._scheduled if not t.cancelled()]), loop._scheduled


def test_stopping_the_agent_ends_every_thread_of_its_http_server(zoo: Path) -> None:
    """One stop signal per worker: a worker that took both once left the other waiting forever (and every
    agent's stop waited 5 s for it)."""
    def server_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("fedge-http") and t.is_alive()]

    with Agent(make_profile(zoo, None, api_port=free_port())) as agent:
        assert agent.api is not None
        assert len(server_threads()) == 1 + agent.api.workers  # the loop and its workers
    assert server_threads() == []


def test_a_malformed_request_behind_a_good_one_on_a_connection_is_answered_after_it(zoo: Path) -> None:
    """Pipelined: the good request's answer first, then the 400, then the connection closes."""
    port = free_port()
    x, _ = sample_inputs(1)
    body = json.dumps(_good(x)).encode()
    good = b"POST /v2/models/mnist1d/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with Agent(make_profile(zoo, None, api_port=port)), socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(good + b"NOT HTTP\r\n\r\n")
        answers = b""
        while part := sock.recv(65536):  # until the agent closes
            answers += part
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"200", b"400"], answers
