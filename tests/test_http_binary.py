"""The OIP binary tensor extension on the agent's HTTP API, called by Triton's own client library.

tritonclient.http is what a Triton or KServe user already has; it sends binary inputs and asks for binary
outputs by default. Malformed binary bodies get a 400 naming what is wrong, and the agent serves on.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from agent.agent import Agent
from cloud.local.mosquitto import free_port
from tests.agent_support import make_profile, sample_inputs, train_small_zoo
from tests.http_support import http_call

INFER = "/v2/models/mnist1d/infer"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An agent serving mnist1d over HTTP (no broker: every answer is the local model's)."""
    root = tmp_path_factory.mktemp("binary")
    train_small_zoo(root / "state" / "models")
    port = free_port()
    with Agent(make_profile(root, None, api_port=port)):
        yield port


def _json_answer(port: int, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, doc = http_call(port, "POST", INFER, json.dumps(body).encode())
    assert status == 200 and isinstance(doc, dict), doc
    out = doc["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (True, False), (False, True), (False, False)])
def test_tritonclient_is_answered_in_every_mix_of_binary_and_json(served: int, binary_in: bool,
                                                                   binary_out: bool) -> None:
    x, _ = sample_inputs(3, seed=11)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{served}")
    assert client.is_server_live() and client.is_model_ready("mnist1d")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.get_model_metadata("mnist1d")["outputs"][0]["name"] == "probabilities"
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    result = client.infer("mnist1d", [tensor], outputs=[triton.InferRequestedOutput("probabilities",
                                                                                    binary_data=binary_out)])
    probs = result.as_numpy("probabilities")
    assert probs is not None and probs.shape == (3, 10)
    np.testing.assert_allclose(probs, _json_answer(served, x), rtol=1e-6)
    output = result.get_output("probabilities")
    assert ("binary_data_size" in (output.get("parameters") or {})) is binary_out
    assert result.get_response()["parameters"]["source"] == "edge"


def test_outputs_default_to_binary_when_a_binary_client_names_none(served: int) -> None:
    """tritonclient asks ``binary_data_output`` when the caller names no outputs."""
    x, _ = sample_inputs(1, seed=12)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.InferenceServerClient(url=f"127.0.0.1:{served}").infer("mnist1d", [tensor])
    assert "binary_data_size" in result.get_output("probabilities")["parameters"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), _json_answer(served, x), rtol=1e-6)


def _binary_call(port: int, header: dict[str, Any], raw: bytes, length: str | None = None) -> tuple[int, Any]:
    head = json.dumps(header).encode()
    return http_call(port, "POST", INFER, head + raw,
                     {"Inference-Header-Content-Length": length if length is not None else str(len(head))})


def _binary_input(size: int | bool, shape: list[int] | None = None) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": shape or [1, 40], "datatype": "FP32",
                        "parameters": {"binary_data_size": size}}]}


RAW = np.zeros((1, 40), np.float32).tobytes()


@pytest.mark.parametrize(("header", "raw", "length", "says"), [
    (_binary_input(160), RAW, "99999", "Inference-Header-Content-Length must be"),
    (_binary_input(160), RAW, "twelve", "Inference-Header-Content-Length must be"),
    (_binary_input(160), RAW, "0", "Inference-Header-Content-Length must be"),
    (_binary_input(160), RAW[:100], None, "runs past the end of the body"),
    (_binary_input(160), RAW + b"\0" * 8, None, "8 binary bytes that no input"),
    (_binary_input(100), RAW[:100], None, "binary_data_size says 100"),
    (_binary_input(-4), RAW, None, "binary_data_size must be a byte count"),
    (_binary_input(True), RAW, None, "binary_data_size must be a byte count"),
    ({**_binary_input(160), "outputs": [{"name": "logits"}]}, RAW, None, "requested output 'logits'"),
    ({**_binary_input(160), "parameters": {"binary_data_output": "yes"}}, RAW, None, "binary_data_output must be"),
])
def test_malformed_binary_bodies_are_a_clear_400(served: int, header: dict[str, Any], raw: bytes,
                                                 length: str | None, says: str) -> None:
    status, doc = _binary_call(served, header, raw, length)
    assert status == 400 and isinstance(doc, dict) and says in doc["error"], doc
    assert _json_answer(served, np.zeros((1, 40), np.float32)).shape == (1, 10)  # and it serves on


def test_binary_data_size_without_the_header_says_which_header_is_missing(served: int) -> None:
    status, doc = http_call(served, "POST", INFER, json.dumps(_binary_input(160)).encode())
    assert status == 400 and isinstance(doc, dict) and "Inference-Header-Content-Length" in doc["error"], doc


def test_a_triton_client_error_is_the_agents_message(served: int) -> None:
    """A request for an input the model does not declare reaches the Triton user as the agent's own words."""
    tensor = triton.InferInput("pixels", [1, 40], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 40), np.float32))
    with pytest.raises(InferenceServerException, match="takes the input 'input'"):
        triton.InferenceServerClient(url=f"127.0.0.1:{served}").infer("mnist1d", [tensor])
