"""`fedge-cloud models import`: a model nobody here designed goes into the store described from its graph, and
is served as it is meant (no second softmax on a model that ends in one); a file fedge cannot serve writes
nothing and says why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from onnx import TensorProto, helper
from torch import nn

from agent.agent import Agent
from agent.manifest import Manifest, TensorSpec
from agent.model_store import ModelStore
from agent.profile import parse_profile
from agent.protocol import InferReply, InferRequest, Topics, decode_reply, encode_request
from agent.session import open_session
from cloud.export import export_module
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.registry import ModelState, open_registry
from cloud.serving.worker import WorkerSettings
from tests.agent_support import profile_doc
from tests.http_support import http_call
from tests.mqtt_helpers import Inbox, client, subscribe
from tests.serving_support import running_worker

BIN = Path(sys.executable).parent
TASK = "gestures"


class Classifier(nn.Module):
    """A small image classifier as a user exports it: input 'pixels' [batch, 3, 16, 16], 4 classes."""

    def __init__(self, softmax: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 4))
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x) * 5
        return torch.softmax(logits, dim=-1) if self.softmax else logits


class Embedder(nn.Module):
    """No class scores: a 16-dimensional embedding per row."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _import(tmp: Path, onnx_file: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fedge-cloud"), "models", "import", "--task", TASK, "--onnx", str(onnx_file),
                           "--store", str(tmp / "state" / "models"), "--registry", str(tmp / "registry.db"), *more],
                          check=False, capture_output=True, text=True, timeout=120)


def _pixels(n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, 16, 16)).astype(np.float32)


def test_a_model_ending_in_softmax_is_imported_as_probabilities_and_served_as_they_are(tmp_path: Path) -> None:
    exported = export_module(Classifier(softmax=True), torch.zeros(2, 3, 16, 16), tmp_path / "mine.onnx",
                             input_name="pixels", output_name="probs")
    ran = _import(tmp_path, exported, "--role", "edge")
    assert ran.returncode == 0, ran.stderr
    assert "first output: probabilities (output 'probs' comes from a Softmax)" in ran.stdout, ran.stdout
    assert "pixels: float32 [batch, 3, 16, 16]" in ran.stdout, ran.stdout
    stored = ModelStore(tmp_path / "state" / "models").get(TASK, f"{TASK}-edge")
    assert stored.manifest.output_kind == "probabilities" and stored.manifest.inputs[0].name == "pixels"
    with open_registry(str(tmp_path / "registry.db")) as registry:
        record = registry.model(TASK, f"{TASK}-edge", 1)
        assert record is not None and record.state is ModelState.STAGED

    x = _pixels()
    own = open_session(exported).run(None, {"pixels": x})[0]
    port = free_port()
    with Agent(_profile(tmp_path, port, name=f"{TASK}-edge")):
        status, doc = http_call(port, "POST", f"/v2/models/{TASK}/infer", json.dumps(
            {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                         "data": x.ravel().tolist()}]}).encode())
    assert status == 200, doc
    answered = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(2, 4)  # type: ignore[index]
    np.testing.assert_allclose(answered, own, rtol=1e-5)  # the model's own distribution, not softmax of it


def test_a_local_file_that_ends_in_softmax_is_served_as_it_is_when_the_profile_says_so(tmp_path: Path) -> None:
    """The path a user takes without the store: models.<task>.path plus output_kind."""
    exported = export_module(Classifier(softmax=True), torch.zeros(2, 3, 16, 16), tmp_path / "mine.onnx",
                             input_name="pixels", output_name="probs")
    x = _pixels()
    own = open_session(exported).run(None, {"pixels": x})[0]
    answers = {}
    for kind in ("probabilities", None):
        port = free_port()
        with Agent(_profile(tmp_path, port, path=exported, output_kind=kind)) as agent:
            answers[kind] = agent.local_model(TASK).batcher.call(x).outputs
    np.testing.assert_allclose(answers["probabilities"], own, rtol=1e-5)
    assert not np.allclose(answers[None], own, atol=1e-3)  # taken for logits, it is flattened: why the option exists


def test_logits_get_softmax_and_an_output_without_class_scores_refuses_a_confidence_policy(tmp_path: Path) -> None:
    logits = export_module(Classifier(softmax=False), torch.zeros(2, 3, 16, 16), tmp_path / "logits.onnx",
                           input_name="pixels")
    ran = _import(tmp_path, logits)
    assert ran.returncode == 0 and "first output: logits" in ran.stdout, ran.stderr + ran.stdout
    embedder = export_module(Embedder(), torch.zeros(2, 12), tmp_path / "embed.onnx", output_name="embedding")
    told = _import(tmp_path, embedder, "--name", "embedder", "--outputs", "other")
    assert told.returncode == 0 and "first output: other (as --outputs says)" in told.stdout, told.stderr
    assert ModelStore(tmp_path / "state" / "models").get(TASK, "embedder").manifest.output_kind == "other"
    profile = _profile(tmp_path, free_port(), path=embedder, output_kind="other", input_shape=[-1, 12],
                       offload=True)
    with pytest.raises(ValueError, match=f"offload.{TASK}: the model embed has no class scores"):
        Agent(profile).start()


def _profile(tmp: Path, port: int, *, name: str | None = None, path: Path | None = None,
             output_kind: str | None = None, input_shape: list[int] | None = None, offload: bool = False) -> Any:
    """An agent profile serving TASK from the store ``_import`` writes (``name``) or from a file (``path``)."""
    doc = profile_doc(tmp, None, api_port=port, samples=False)
    model: dict[str, Any] = {"input": {"name": "pixels" if input_shape is None else "input",
                                       "shape": input_shape or [-1, 3, 16, 16]}}
    model.update({"name": name} if name else {"path": str(path)})
    if output_kind is not None:
        model["output_kind"] = output_kind
    doc["models"] = {TASK: model}
    doc["offload"] = {TASK: {"mode": "threshold", "metric": "max_prob", "threshold": 0.5}} if offload else {}
    doc["broker"] = {"host": "127.0.0.1", "port": free_port()}  # nobody there: every answer is local
    return parse_profile(yaml.safe_dump(doc), str(tmp / "profile.yaml"), env={})


def _graph(inputs: list[Any], nodes: list[Any], outputs: list[Any], path: Path, domain_ops: bool = False) -> Path:
    opsets = [helper.make_opsetid("", 17), *([helper.make_opsetid("com.example", 1)] if domain_ops else [])]
    model = helper.make_model(helper.make_graph(nodes, "user", inputs, outputs), opset_imports=opsets)
    path.write_bytes(model.SerializeToString())
    return path


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    f32 = TensorProto.FLOAT
    text = tmp / "notes.onnx"
    text.write_text("not a model")
    return {
        "not onnx": (text, "not an ONNX model"),
        "checker": (_graph([helper.make_tensor_value_info("x", f32, ["batch", 4])],
                           [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["y"])],
                           [helper.make_tensor_value_info("y", f32, ["batch", 4])], tmp / "twice.onnx"),
                    "the ONNX checker refuses it"),
        "runtime": (_graph([helper.make_tensor_value_info("x", f32, ["batch", 4])],
                           [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
                           [helper.make_tensor_value_info("y", f32, ["batch", 4])], tmp / "custom.onnx", True),
                    "ONNX Runtime cannot load it"),
        "no batch axis": (_graph([helper.make_tensor_value_info("x", f32, [4])], [helper.make_node("Relu", ["x"], ["y"])],
                                 [helper.make_tensor_value_info("y", f32, [4])], tmp / "flat.onnx"),
                          "input 'x' has shape [4], no batch axis"),
        "dtype": (_graph([helper.make_tensor_value_info("x", TensorProto.STRING, ["batch", 1])],
                         [helper.make_node("Identity", ["x"], ["y"])],
                         [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 1])], tmp / "text.onnx"),
                  "element type"),
        "missing": (tmp / "nowhere.onnx", "cannot be read"),
    }


@pytest.mark.parametrize("case", ["not onnx", "checker", "runtime", "no batch axis", "dtype", "missing"])
def test_a_file_fedge_cannot_serve_writes_nothing_and_says_why(tmp_path: Path, case: str) -> None:
    onnx_file, says = _bad_files(tmp_path)[case]
    ran = _import(tmp_path, onnx_file)
    assert ran.returncode == 2 and says in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, f"{TASK}-cloud") == []
    with open_registry(str(tmp_path / "registry.db")) as registry:
        assert registry.model(TASK, f"{TASK}-cloud", 1) is None


def test_a_second_file_under_a_name_that_takes_other_inputs_is_refused(tmp_path: Path) -> None:
    first = export_module(Classifier(softmax=False), torch.zeros(2, 3, 16, 16), tmp_path / "a.onnx",
                          input_name="pixels")
    assert _import(tmp_path, first).returncode == 0
    other = export_module(Embedder(), torch.zeros(2, 12), tmp_path / "b.onnx")
    ran = _import(tmp_path, other, "--outputs", "other")
    assert ran.returncode == 2 and "import it under another --name" in ran.stderr, ran.stderr
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, f"{TASK}-cloud") == [1]


def test_a_file_said_to_hold_probabilities_that_does_not_is_refused(tmp_path: Path) -> None:
    logits = export_module(Classifier(softmax=False), torch.zeros(2, 3, 16, 16), tmp_path / "logits.onnx",
                           input_name="pixels")
    ran = _import(tmp_path, logits, "--outputs", "probabilities")
    assert ran.returncode == 2 and "rows do not sum to 1" in ran.stderr, ran.stderr


def test_manifests_signed_before_output_kind_existed_still_verify() -> None:
    """The new field is left out of the signed bytes while unset."""
    spec = [TensorSpec(name="input", dtype="float32", shape=[None, 40])]
    old = Manifest(task="t", name="n", version=1, sha256="0" * 64, size_bytes=1, inputs=spec, outputs=spec)
    assert b"output_kind" not in old.signed_bytes()
    assert b'"output_kind":"probabilities"' in old.model_copy(update={"output_kind": "probabilities"}).signed_bytes()


def test_a_cloud_worker_serves_an_imported_model_by_its_own_input_name_and_output_kind(tmp_path: Path,
                                                                                         broker: Mosquitto) -> None:
    exported = export_module(Classifier(softmax=True), torch.zeros(2, 3, 16, 16), tmp_path / "mine.onnx",
                             input_name="pixels", output_name="probs")
    assert _import(tmp_path, exported).returncode == 0
    x = _pixels(1)
    settings = WorkerSettings(store=tmp_path / "state" / "models", broker=broker.settings, worker_id="w",
                              status_interval_s=0.2)
    with running_worker(settings, broker), client(broker, "caller") as caller:
        inbox = Inbox(caller)
        subscribe(caller, "test/replies")
        payload, props = encode_request(InferRequest(TASK, {"pixels": x}), response_topic="test/replies")
        caller.publish(Topics().infer(TASK), payload, qos=1, properties=props)
        msg = inbox.get(timeout=10)
    reply = decode_reply(msg.payload, msg.properties)
    assert isinstance(reply, InferReply), reply
    np.testing.assert_allclose(reply.outputs["probabilities"], open_session(exported).run(None, {"pixels": x})[0],
                               rtol=1e-5)
