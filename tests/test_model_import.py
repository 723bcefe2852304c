"""`fedge-cloud models import`: a model nobody here designed goes into the store described from its graph, and
is served as it is meant (no second softmax on a model that ends in one); a file fedge cannot serve writes
nothing and says why."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from agent.agent import Agent
from agent.manifest import Manifest, TensorSpec
from agent.model_store import ModelStore
from agent.protocol import InferReply, InferRequest, Topics
from agent.session import open_session
from cloud.export import export_module
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.registry import ModelState, open_registry
from tests.http_support import http_call
from tests.import_support import (
    LABELS,
    TASK,
    Classifier,
    Embedder,
    agent_profile,
    asking_a_worker,
    import_model,
    labels_file,
    pixels,
)


def test_a_model_ending_in_softmax_is_imported_as_probabilities_and_served_as_they_are(tmp_path: Path) -> None:
    exported = export_module(Classifier(softmax=True), torch.zeros(2, 3, 16, 16), tmp_path / "mine.onnx",
                             input_name="pixels", output_name="probs")
    ran = import_model(tmp_path, exported, "--role", "edge", "--labels", str(labels_file(tmp_path, LABELS)))
    assert ran.returncode == 0, ran.stderr
    assert "first output: probabilities (output 'probs' comes from a Softmax)" in ran.stdout, ran.stdout
    assert "pixels: float32 [batch, 3, 16, 16]" in ran.stdout, ran.stdout
    assert "labels: wave, point, fist, palm (4)" in ran.stdout and "uncalibrated" in ran.stdout, ran.stdout
    stored = ModelStore(tmp_path / "state" / "models").get(TASK, f"{TASK}-edge")
    assert stored.manifest.output_kind == "probabilities" and stored.manifest.inputs[0].name == "pixels"
    assert stored.manifest.labels == LABELS and stored.manifest.recipe == {"imported": "mine.onnx", "calibrated": False}
    with open_registry(str(tmp_path / "registry.db")) as registry:
        record = registry.model(TASK, f"{TASK}-edge", 1)
        assert record is not None and record.state is ModelState.STAGED

    x = pixels()
    own = open_session(exported).run(None, {"pixels": x})[0]
    port = free_port()
    with Agent(agent_profile(tmp_path, port, name=f"{TASK}-edge")):
        status, doc = http_call(port, "POST", f"/v2/models/{TASK}/infer", json.dumps(
            {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                         "data": x.ravel().tolist()}]}).encode())
    assert status == 200, doc
    answered = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(2, 4)  # type: ignore[index]
    np.testing.assert_allclose(answered, own, rtol=1e-5)  # the model's own distribution, not softmax of it
    assert doc["parameters"]["labels"] == [LABELS[i] for i in own.argmax(axis=1)]  # type: ignore[index]


@pytest.mark.parametrize("case", ["too few", "blank line", "no class scores", "not text"])
def test_labels_that_do_not_fit_the_model_write_nothing_and_say_why(tmp_path: Path, case: str) -> None:
    model = export_module(Classifier(softmax=False), torch.zeros(2, 3, 16, 16), tmp_path / "m.onnx",
                          input_name="pixels")
    embedder = export_module(Embedder(), torch.zeros(2, 12), tmp_path / "e.onnx")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9\n".encode("latin-1") * 4)
    onnx_file, labels, says = {
        "too few": (model, labels_file(tmp_path, LABELS[:3], "three.txt"), "3 labels, and the model scores 4 classes"),
        "blank line": (model, labels_file(tmp_path, ["wave", "", "fist", "palm"], "gap.txt"), "gap.txt:2: a label is one line"),
        "no class scores": (embedder, labels_file(tmp_path, LABELS), "this model's first output has none"),
        "not text": (model, binary, "not UTF-8 text"),
    }[case]
    told = ["--outputs", "other"] if onnx_file == embedder else []
    ran = import_model(tmp_path, onnx_file, "--labels", str(labels), *told)
    assert ran.returncode == 2 and says in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, f"{TASK}-cloud") == []


def test_a_local_file_that_ends_in_softmax_is_served_as_it_is_when_the_profile_says_so(tmp_path: Path) -> None:
    """The path a user takes without the store: models.<task>.path plus output_kind."""
    exported = export_module(Classifier(softmax=True), torch.zeros(2, 3, 16, 16), tmp_path / "mine.onnx",
                             input_name="pixels", output_name="probs")
    x = pixels()
    own = open_session(exported).run(None, {"pixels": x})[0]
    answers = {}
    for kind in ("probabilities", None):
        port = free_port()
        with Agent(agent_profile(tmp_path, port, path=exported, output_kind=kind)) as agent:
            answers[kind] = agent.local_model(TASK).batcher.call((x,)).outputs[0]
    np.testing.assert_allclose(answers["probabilities"], own, rtol=1e-5)
    assert not np.allclose(answers[None], own, atol=1e-3)  # taken for logits, it is flattened: why the option exists


def test_logits_get_softmax_and_an_output_without_class_scores_refuses_a_confidence_policy(tmp_path: Path) -> None:
    logits = export_module(Classifier(softmax=False), torch.zeros(2, 3, 16, 16), tmp_path / "logits.onnx",
                           input_name="pixels")
    ran = import_model(tmp_path, logits)
    assert ran.returncode == 0 and "first output: logits" in ran.stdout, ran.stderr + ran.stdout
    embedder = export_module(Embedder(), torch.zeros(2, 12), tmp_path / "embed.onnx", output_name="embedding")
    told = import_model(tmp_path, embedder, "--name", "embedder", "--outputs", "other")
    assert told.returncode == 0 and "first output: other (as --outputs says)" in told.stdout, told.stderr
    assert ModelStore(tmp_path / "state" / "models").get(TASK, "embedder").manifest.output_kind == "other"
    profile = agent_profile(tmp_path, free_port(), path=embedder, output_kind="other", input_shape=[-1, 12],
                       offload=True)
    with pytest.raises(ValueError, match=f"offload.{TASK}: the model embed has no class scores"):
        Agent(profile).start()


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
    ran = import_model(tmp_path, onnx_file)
    assert ran.returncode == 2 and says in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, f"{TASK}-cloud") == []
    with open_registry(str(tmp_path / "registry.db")) as registry:
        assert registry.model(TASK, f"{TASK}-cloud", 1) is None


def test_a_second_file_under_a_name_that_takes_other_inputs_is_refused(tmp_path: Path) -> None:
    first = export_module(Classifier(softmax=False), torch.zeros(2, 3, 16, 16), tmp_path / "a.onnx",
                          input_name="pixels")
    assert import_model(tmp_path, first).returncode == 0
    other = export_module(Embedder(), torch.zeros(2, 12), tmp_path / "b.onnx")
    ran = import_model(tmp_path, other, "--outputs", "other")
    assert ran.returncode == 2 and "import it under another --name" in ran.stderr, ran.stderr
    assert ModelStore(tmp_path / "state" / "models").versions(TASK, f"{TASK}-cloud") == [1]


def test_a_file_said_to_hold_probabilities_that_does_not_is_refused(tmp_path: Path) -> None:
    logits = export_module(Classifier(softmax=False), torch.zeros(2, 3, 16, 16), tmp_path / "logits.onnx",
                           input_name="pixels")
    ran = import_model(tmp_path, logits, "--outputs", "probabilities")
    assert ran.returncode == 2 and "rows do not sum to 1" in ran.stderr, ran.stderr


def test_manifests_signed_before_output_kind_and_labels_existed_still_verify() -> None:
    """The new fields are left out of the signed bytes while unset; labels must fit the output."""
    spec = [TensorSpec(name="input", dtype="float32", shape=[None, 4])]
    old = Manifest(task="t", name="n", version=1, sha256="0" * 64, size_bytes=1, inputs=spec, outputs=spec)
    assert b"output_kind" not in old.signed_bytes() and b"labels" not in old.signed_bytes()
    assert b'"output_kind":"probabilities"' in old.model_copy(update={"output_kind": "probabilities"}).signed_bytes()
    assert b'"labels":["wave"' in old.model_copy(update={"labels": LABELS}).signed_bytes()
    with pytest.raises(ValueError, match="3 labels for 4 classes of output 'input'"):
        Manifest.model_validate({**old.model_dump(), "labels": LABELS[:3]})
    with pytest.raises(ValueError, match=r"label 2 .* must be one line"):
        Manifest.model_validate({**old.model_dump(), "labels": ["a", "b\nc", "d", "e"]})


def test_a_cloud_worker_serves_an_imported_model_by_its_own_input_name_and_output_kind(tmp_path: Path,
                                                                                         broker: Mosquitto) -> None:
    exported = export_module(Classifier(softmax=True), torch.zeros(2, 3, 16, 16), tmp_path / "mine.onnx",
                             input_name="pixels", output_name="probs")
    assert import_model(tmp_path, exported, "--labels", str(labels_file(tmp_path, LABELS))).returncode == 0
    x = pixels(1)
    with asking_a_worker(tmp_path, broker) as ask:
        reply = ask(InferRequest(TASK, {"pixels": x}))
        body = json.dumps({"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}]})
        rr = subprocess.run(["mosquitto_rr", "-V", "5", "-h", broker.host, "-p", str(broker.port), "-t",
                             Topics().infer(TASK), "-e", "test/rr", "-W", "10", "-m", body],
                            capture_output=True, check=False, text=True, timeout=30)
    assert rr.returncode == 0, rr.stderr
    rr_doc = json.loads(rr.stdout)
    assert isinstance(reply, InferReply), reply
    own = open_session(exported).run(None, {"pixels": x})[0]
    np.testing.assert_allclose(reply.outputs["probabilities"], own, rtol=1e-5)
    assert rr_doc["parameters"]["labels"] == [LABELS[int(own.argmax())]]  # a JSON caller gets the class by name
