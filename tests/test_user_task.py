"""A task of the user's own, declared in YAML over an .npz, through every step a user takes: import their cloud
model, calibrate it, distil and compress an edge model from it, serve both, offload what the edge is unsure of."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from agent.agent import Agent
from agent.model_store import ModelStore
from agent.profile import parse_profile
from agent.protocol import InferRequest, Source
from agent.session import open_session
from cloud.export import export_module
from cloud.local.mosquitto import Mosquitto, free_port
from tests.agent_support import profile_doc
from tests.serving_support import cloud_heard_by

BIN = Path(sys.executable).parent
TASK = "vibration"
LENGTH, CLASSES = 24, 4
SMALL_RECIPE = {"pruning": {"structured": {"keep_ratios": [1.0, 0.5]}, "unstructured": {"sparsities": []},
                            "finetune_epochs": 3},
                "quantization": {"modes": ["fp32", "dynamic"], "per_channel": [False]}, "latency_repeats": 5}


def signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy sine bursts, one frequency per class, at random phases: easy for a trained model, not for a glance."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    t = np.arange(LENGTH) / LENGTH
    x = np.sin(2 * np.pi * (y[:, None] + 1) * t + rng.uniform(0, 2 * np.pi, (n, 1))) + rng.normal(0, 0.9, (n, LENGTH))
    return x.astype(np.float32), y.astype(np.int64)


def cloud_model(x: np.ndarray, y: np.ndarray, path: Path) -> Path:
    """The user's own cloud model: a torch MLP ending in a Softmax, exported as users do."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(LENGTH, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    optimizer = torch.optim.Adam(body.parameters(), lr=1e-2)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(body(xs), ys).backward()
        optimizer.step()
    return export_module(nn.Sequential(body, nn.Softmax(dim=-1)).eval(), torch.zeros(2, LENGTH), path,
                         input_name="signal", output_name="probs")


def fedge_cloud(tmp: Path, *args: str, code: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``fedge-cloud`` with the test's task folder, store and registry (``code``: the user's modules, on PYTHONPATH)."""
    env = {**os.environ, "FEDGE_TASKS": str(tmp / "tasks"), "FEDGE_STORE": str(tmp / "state" / "models"),
           "FEDGE_REGISTRY": str(tmp / "registry.db"), **({"PYTHONPATH": str(code)} if code else {})}
    return subprocess.run([str(BIN / "fedge-cloud"), *args], check=False, capture_output=True, text=True,
                          timeout=600, env=env)


def task_file(tmp: Path, doc: dict[str, object], name: str = TASK) -> Path:
    folder = tmp / "tasks"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_user_task_goes_from_its_npz_to_an_edge_model_that_offloads_to_the_users_cloud_model(
        tmp_path: Path, broker: Mosquitto) -> None:
    x_train, y_train = signals(1500, 1)
    x_val, y_val = signals(300, 2)
    x_test, y_test = signals(300, 3)
    np.savez(tmp_path / "vibration.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test,
             y_test=y_test)
    task_file(tmp_path, {"description": "pump vibration, 4 fault kinds", "data": {"npz": "../vibration.npz"},
                         "input": {"shape": [LENGTH]}, "classes": CLASSES, "epochs": {"edge": 15, "finetune": 3}})
    onnx_file = cloud_model(x_train, y_train, tmp_path / "mine.onnx")
    steps = [("models", "import", "--task", TASK, "--onnx", str(onnx_file)),
             ("models", "calibrate", "--task", TASK, "--data", str(tmp_path / "vibration.npz")),
             ("train", "--task", TASK, "--model", "edge", "--no-progress")]
    for step in steps:
        ran = fedge_cloud(tmp_path, *step)
        assert ran.returncode == 0, (step, ran.stdout, ran.stderr)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(SMALL_RECIPE))
    compressed = fedge_cloud(tmp_path, "compress", "--task", TASK, "--recipe", str(tmp_path / "recipe.yaml"),
                             "--max-accuracy-drop", "10", "--out", str(tmp_path / "report"))
    assert compressed.returncode == 0, compressed.stdout + compressed.stderr
    assert "teacher vibration-cloud v2 (imported" in compressed.stdout and "released vibration/vibration-edge v2" \
        in compressed.stdout, compressed.stdout
    store = ModelStore(tmp_path / "state" / "models")
    edge = store.get(TASK, f"{TASK}-edge")
    assert edge.manifest.version == 2 and edge.manifest.parent_version == 1
    edge_session = open_session(edge.model_path)
    edge_right = edge_session.run(None, {"input": x_test})[0].argmax(axis=1) == y_test
    cloud_right = open_session(onnx_file).run(None, {"signal": x_test})[0].argmax(axis=1) == y_test
    assert edge_right.mean() > 0.5 and cloud_right.mean() > edge_right.mean()  # the student learnt, not all of it

    doc = profile_doc(tmp_path, broker, api_port=free_port())
    doc["models"] = {TASK: {"name": f"{TASK}-edge", "input": {"name": "input", "shape": [-1, LENGTH]}}}
    doc["offload"] = {TASK: {"mode": "threshold", "metric": "max_prob", "threshold": 0.8}}
    with Agent(parse_profile(yaml.safe_dump(doc), str(tmp_path / "profile.yaml"), env={})) as agent, \
            cloud_heard_by(agent, store.root, broker):
        replies = [agent.infer(InferRequest(TASK, {"input": x_test[i:i + 1]}, timeout_ms=5000))
                   for i in range(len(x_test))]
    sources = [r.source for r in replies]
    assert Source.CLOUD in sources and Source.EDGE in sources and not any(r.degraded for r in replies), sources
    assert {r.model_name for r in replies if r.source is Source.CLOUD} == {f"{TASK}-cloud"}
    cascade_right = np.array([r.outputs["probabilities"].argmax() for r in replies]) == y_test
    assert cascade_right.mean() > edge_right.mean()  # the hard cases went to the better model


@pytest.mark.parametrize("case", ["unknown key", "no array", "labels", "shape", "conv2d on a signal", "no cloud"])
def test_a_task_file_or_data_that_does_not_fit_is_named_and_trains_nothing(tmp_path: Path, case: str) -> None:
    x, y = signals(60, 4)
    np.savez(tmp_path / "ok.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    np.savez(tmp_path / "partial.npz", x_train=x, y_train=y, x_test=x[:10])
    np.savez(tmp_path / "labels.npz", x_train=x, y_train=y + 5, x_test=x[:10], y_test=y[:10])
    base = {"data": {"npz": "../ok.npz"}, "input": {"shape": [LENGTH]}, "classes": CLASSES}
    doc, says = {
        "unknown key": ({**base, "epoch": 3}, f"{TASK}.yaml:7:1: epoch: unknown key (did you mean 'epochs'?)"),
        "no array": ({**base, "data": {"npz": "../partial.npz"}}, "no array 'y_test'"),
        "labels": ({**base, "data": {"npz": "../labels.npz"}}, "y_train must be integer labels 0 .. 3"),
        "shape": ({**base, "input": {"shape": [12]}}, "x_train is float32 [60, 24]; input.shape says [rows, 12]"),
        "conv2d on a signal": ({**base, "edge": {"kind": "conv2d", "channels": [4], "kernels": [3], "strides": [1]}},
                               "edge.kind conv2d does not fit input.shape [24]"),
        "no cloud": (base, "no vibration-cloud in the store"),
    }[case]
    task_file(tmp_path, doc)
    ran = fedge_cloud(tmp_path, "train", "--task", TASK, "--model", "edge", "--no-progress")
    assert ran.returncode == 2 and says in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert not (tmp_path / "state" / "models" / TASK / f"{TASK}-edge").exists()


def test_the_fleet_fine_tunes_a_user_tasks_edge_model_with_flower(tmp_path: Path) -> None:
    """The same ServerApp and ClientApp as the zoo's, on Flower's simulation engine, two devices, two rounds."""
    x_train, y_train = signals(1000, 5)
    np.savez(tmp_path / "v.npz", x_train=x_train, y_train=y_train, x_test=signals(200, 6)[0], y_test=signals(200, 6)[1])
    task_file(tmp_path, {"data": {"npz": "../v.npz"}, "input": {"shape": [LENGTH]}, "classes": CLASSES,
                         "epochs": {"edge": 3}})
    onnx_file = cloud_model(x_train, y_train, tmp_path / "mine.onnx")
    for step in [("models", "import", "--task", TASK, "--onnx", str(onnx_file)),
                 ("train", "--task", TASK, "--model", "edge", "--no-progress"),
                 ("fl", "simulate", "--task", TASK, "--devices", "2", "--rounds", "2", "--samples-per-device", "300",
                  "--store", str(tmp_path / "state" / "models"), "--registry", str(tmp_path / "registry.db"))]:
        ran = fedge_cloud(tmp_path, *step)
        assert ran.returncode == 0, (step, ran.stdout[-2000:], ran.stderr[-2000:])
    rows = [line.split() for line in ran.stdout.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("1", "2", "0", "0"), ("2", "2", "0", "0")], ran.stdout
    assert all(int(r[4]) > 0 for r in rows), ran.stdout  # both devices trained on what they kept


NETS = '''
from torch import nn


def teacher(shape, classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0], 96), nn.ReLU(), nn.Linear(96, classes))


def student(shape, classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0], 16), nn.ReLU(), nn.Linear(16, classes))


def flat(shape, classes):
    return nn.Linear(shape[0], classes + 1)
'''


def test_a_cloud_model_and_a_student_from_the_users_own_code_are_trained_compressed_and_fine_tuned(
        tmp_path: Path) -> None:
    """cloud.factory and edge.factory name the user's torch code; compress prunes it unstructured only."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "pump_nets.py").write_text(NETS)
    x_train, y_train = signals(1200, 7)
    x_test, y_test = signals(300, 8)
    np.savez(tmp_path / "v.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    task_file(tmp_path, {"data": {"npz": "../v.npz"}, "input": {"shape": [LENGTH]}, "classes": CLASSES,
                         "cloud": {"factory": "pump_nets:teacher"}, "edge": {"factory": "pump_nets:student"},
                         "epochs": {"cloud": 20, "edge": 10, "finetune": 2}})
    recipe = {**SMALL_RECIPE, "pruning": {**SMALL_RECIPE["pruning"], "unstructured": {"sparsities": [0.5]}}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    outputs = []
    for step in [("train", "--task", TASK, "--model", "cloud", "--no-progress"),
                 ("train", "--task", TASK, "--model", "edge", "--no-progress"),
                 ("compress", "--task", TASK, "--recipe", str(tmp_path / "recipe.yaml"), "--max-accuracy-drop", "10",
                  "--out", str(tmp_path / "report")),
                 ("fl", "simulate", "--task", TASK, "--devices", "2", "--rounds", "1", "--samples-per-device", "300",
                  "--store", str(tmp_path / "state" / "models"), "--registry", str(tmp_path / "registry.db"))]:
        ran = fedge_cloud(tmp_path, *step, code=tmp_path / "code")  # the user's code is importable, as it must be
        assert ran.returncode == 0, (step, ran.stdout[-2000:], ran.stderr[-2000:])
        outputs.append(ran.stdout)
    assert "structured pruning skipped: pump_nets:student is your code" in outputs[2], outputs[2]
    assert "sparse50-global" in outputs[2] and "channels50" not in outputs[2], outputs[2]
    assert "teacher vibration-cloud v1" in outputs[2] and "(imported" not in outputs[2], outputs[2]  # fedge trained it
    rounds = [line.split() for line in outputs[3].splitlines() if line.split()[:1] == ["1"]]
    assert rounds and rounds[0][1] == "2", outputs[3]  # both devices fine-tuned the user's student
    store = ModelStore(tmp_path / "state" / "models")
    edge = open_session(store.get(TASK, f"{TASK}-edge").model_path)
    cloud = open_session(store.get(TASK, f"{TASK}-cloud").model_path)
    edge_accuracy = (edge.run(None, {"input": x_test})[0].argmax(axis=1) == y_test).mean()
    cloud_accuracy = (cloud.run(None, {"input": x_test})[0].argmax(axis=1) == y_test).mean()
    assert cloud_accuracy > 0.6 and edge_accuracy > 0.4, (cloud_accuracy, edge_accuracy)


@pytest.mark.parametrize(("factory", "says"), [
    ("pump_nets:nothing", "model factory pump_nets:nothing: module 'pump_nets' has no attribute 'nothing'"),
    ("nowhere:student", "model factory nowhere:student: No module named 'nowhere' (its module must be importable"),
    ("pump_nets:flat", "model factory pump_nets:flat: answers shape [2, 5] for 2 rows"),
])
def test_a_factory_that_cannot_make_the_model_is_named_and_trains_nothing(tmp_path: Path, factory: str,
                                                                          says: str) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "pump_nets.py").write_text(NETS)
    x, y = signals(60, 9)
    np.savez(tmp_path / "v.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    task_file(tmp_path, {"data": {"npz": "../v.npz"}, "input": {"shape": [LENGTH]}, "classes": CLASSES,
                         "cloud": {"factory": factory}})
    ran = fedge_cloud(tmp_path, "train", "--task", TASK, "--model", "cloud", "--no-progress", code=tmp_path / "code")
    assert ran.returncode == 2 and says in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert not (tmp_path / "state" / "models" / TASK).exists()


@pytest.mark.parametrize(("task", "says"), [("nowhere", "unknown task 'nowhere'"),
                                            (TASK, f"{TASK}.yaml:7:1: epoch: unknown key")])
def test_fl_names_a_task_that_is_not_there_or_does_not_validate_before_it_starts_anything(
        tmp_path: Path, task: str, says: str) -> None:
    task_file(tmp_path, {"data": {"npz": "x.npz"}, "input": {"shape": [LENGTH]}, "classes": CLASSES, "epoch": 3})
    ran = fedge_cloud(tmp_path, "fl", "simulate", "--task", task, "--devices", "2", "--rounds", "1",
                      "--work-dir", str(tmp_path / "work"))
    assert ran.returncode == 2 and says in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert not (tmp_path / "work").exists()
