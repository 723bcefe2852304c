"""Models with several inputs and outputs, and a published architecture nobody here designed, served as users
have them: every declared input by name, every output answered, at the edge and in the cloud."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as triton
import yaml
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from agent.agent import Agent
from agent.confidence import softmax
from agent.model_store import ModelStore
from agent.profile import parse_profile
from agent.protocol import InferReply, InferRequest, Source
from agent.session import open_session
from bench.mobilenet import MobileNetV2, calibrated
from cloud.export import export_module
from cloud.local.mosquitto import Mosquitto, free_port
from tests.agent_support import profile_doc
from tests.http_support import http_call
from tests.import_support import asking_a_worker, import_model
from tests.serving_support import cloud_heard_by

TASK = "gestures"  # import_model's task
WEIGHTS = np.random.default_rng(3).standard_normal((6, 3)).astype(np.float32) * 0.05  # small: unsure answers


def two_inputs_model(path: Path) -> Path:
    """features [N, 6] and mask [N, 6] in; logits = (features * mask) @ W [N, 3] and active = sum(mask) [N, 1] out."""
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Mul", ["features", "mask"], ["masked"]),
         helper.make_node("MatMul", ["masked", "w"], ["logits"]),
         helper.make_node("ReduceSum", ["mask", "axes"], ["active"], keepdims=1)],
        "masked", [helper.make_tensor_value_info("features", f32, ["batch", 6]),
                   helper.make_tensor_value_info("mask", f32, ["batch", 6])],
        [helper.make_tensor_value_info("logits", f32, ["batch", 3]),
         helper.make_tensor_value_info("active", f32, ["batch", 1])],
        [helper.make_tensor("w", f32, WEIGHTS.shape, WEIGHTS.ravel()), helper.make_tensor("axes", TensorProto.INT64,
                                                                                          [1], [1])])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def inputs(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    return (rng.standard_normal((n, 6)).astype(np.float32), (rng.random((n, 6)) > 0.4).astype(np.float32))


def profile(tmp: Path, broker: Mosquitto | None, port: int, input_name: str, shape: list[int],
            offload: bool) -> Any:
    doc = profile_doc(tmp, broker, api_port=port)
    doc["models"] = {TASK: {"name": f"{TASK}-edge", "input": {"name": input_name, "shape": shape}}}
    doc["offload"] = {TASK: {"mode": "threshold", "metric": "max_prob", "threshold": 0.9}} if offload else {}
    return parse_profile(yaml.safe_dump(doc), str(tmp / "profile.yaml"), env={})


def imported(tmp: Path, onnx_file: Path, roles: tuple[str, ...]) -> None:
    for role in roles:
        ran = import_model(tmp, onnx_file, "--role", role)
        assert ran.returncode == 0, ran.stderr


def test_a_two_input_two_output_model_is_served_by_input_name_and_answers_every_output(tmp_path: Path) -> None:
    model = two_inputs_model(tmp_path / "masked.onnx")
    imported(tmp_path, model, ("edge",))
    features, mask = inputs()
    logits, active = open_session(model).run(None, {"features": features, "mask": mask})
    port = free_port()
    with Agent(profile(tmp_path, None, port, "features", [-1, 6], offload=False)):
        caller = triton.InferenceServerClient(f"127.0.0.1:{port}")
        meta = caller.get_model_metadata(TASK)
        assert [i["name"] for i in meta["inputs"]] == ["features", "mask"], meta
        assert [o["name"] for o in meta["outputs"]] == ["probabilities", "active"], meta
        sent = []
        for name, x in (("mask", mask), ("features", features)):  # order does not matter, names do
            tensor = triton.InferInput(name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            sent.append(tensor)
        answer = caller.infer(TASK, sent, outputs=[triton.InferRequestedOutput("probabilities"),
                                                   triton.InferRequestedOutput("active")])
        np.testing.assert_allclose(answer.as_numpy("probabilities"), softmax(logits), rtol=1e-5)
        np.testing.assert_array_equal(answer.as_numpy("active"), active)
        with pytest.raises(InferenceServerException, match="takes the inputs 'features', 'mask'"):
            caller.infer(TASK, sent[1:])
        short = triton.InferInput("mask", [2, 6], "FP32")
        short.set_data_from_numpy(mask[:2], binary_data=False)
        with pytest.raises(InferenceServerException, match="different numbers of rows"):
            caller.infer(TASK, [sent[1], short])
        status, doc = http_call(port, "POST", f"/v2/models/{TASK}/infer", json.dumps(  # JSON, no tritonclient
            {"inputs": [{"name": n, "shape": [3, 6], "datatype": "FP32", "data": x.ravel().tolist()}
                        for n, x in (("features", features), ("mask", mask))]}).encode())
    assert status == 200, doc
    outputs = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}  # type: ignore[index]
    np.testing.assert_array_equal(outputs["active"], active)


def test_an_unsure_two_input_answer_is_offloaded_with_both_inputs_and_the_cloud_answers_every_output(
        tmp_path: Path, broker: Mosquitto) -> None:
    model = two_inputs_model(tmp_path / "masked.onnx")
    imported(tmp_path, model, ("edge", "cloud"))
    features, mask = inputs()
    logits, active = open_session(model).run(None, {"features": features, "mask": mask})
    assert softmax(logits).max() < 0.9  # every row is unsure at the profile's threshold
    with Agent(profile(tmp_path, broker, free_port(), "features", [-1, 6], offload=True)) as agent, \
            cloud_heard_by(agent, tmp_path / "state" / "models", broker):
        reply = agent.infer(InferRequest(TASK, {"features": features, "mask": mask}, timeout_ms=5000))
    assert reply.source is Source.CLOUD and reply.model_name == f"{TASK}-cloud", reply
    np.testing.assert_allclose(reply.outputs["probabilities"], softmax(logits), rtol=1e-5)
    np.testing.assert_array_equal(reply.outputs["active"], active)  # the cloud's second output, passed on


def test_mobilenet_v2_is_imported_and_served_by_its_own_input_name_at_the_edge_and_in_the_cloud(
        tmp_path: Path, broker: Mosquitto) -> None:
    """The published architecture (bench/mobilenet.py, random weights) at 3x64x64 and 10 classes, as a user exports it."""
    torch.manual_seed(0)
    network = calibrated(MobileNetV2(classes=10), 64, batches=1)
    onnx_file = export_module(network, torch.zeros(2, 3, 64, 64), tmp_path / "mobilenetv2.onnx",
                              input_name="image", output_name="scores")
    imported(tmp_path, onnx_file, ("edge", "cloud"))
    assert ModelStore(tmp_path / "state" / "models").get(TASK, f"{TASK}-edge").manifest.inputs[0].name == "image"
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    own = softmax(open_session(onnx_file).run(None, {"image": x})[0])
    port = free_port()
    with Agent(profile(tmp_path, None, port, "image", [-1, 3, 64, 64], offload=False)):
        status, doc = http_call(port, "POST", f"/v2/models/{TASK}/infer", json.dumps(
            {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        ).encode())
    assert status == 200, doc
    out = doc["outputs"][0]  # type: ignore[index]
    np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(out["shape"]), own, rtol=1e-4, atol=1e-6)
    with asking_a_worker(tmp_path, broker) as ask:
        reply = ask(InferRequest(TASK, {"image": x}))
    assert isinstance(reply, InferReply), reply
    np.testing.assert_allclose(reply.outputs["probabilities"], own, rtol=1e-4, atol=1e-6)
