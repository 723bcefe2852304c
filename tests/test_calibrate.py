"""`fedge-cloud models calibrate`: an imported classifier's temperature fitted on the user's labelled rows, stored
as a new version that agents serve calibrated; data that does not fit the model writes nothing and says why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.agent import Agent
from agent.confidence import softmax
from agent.model_store import ModelStore
from agent.session import open_session
from cloud.compress.calibration import expected_calibration_error
from cloud.export import export_module
from cloud.local.mosquitto import free_port
from cloud.registry import ModelState, open_registry
from tests.import_support import BIN, LABELS, TASK, Classifier, Embedder, agent_profile, import_model, labels_file

ROWS = 600


def _calibrate(tmp: Path, data: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fedge-cloud"), "models", "calibrate", "--task", TASK, "--data", str(data),
                           "--store", str(tmp / "state" / "models"), "--registry", str(tmp / "registry.db"), *more],
                          check=False, capture_output=True, text=True, timeout=120)


def _overconfident_rows(onnx_file: Path, path: Path) -> Path:
    """Rows the model is sure of and right on only ~60 % of the time: its own top class, 40 % of them swapped."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((ROWS, 3, 16, 16)).astype(np.float32)
    y = open_session(onnx_file).run(None, {"pixels": x})[0].argmax(axis=1)
    swap = rng.random(ROWS) < 0.4
    y[swap] = rng.integers(0, 4, swap.sum())
    np.savez(path, x_val=x, y_val=y)
    return path


@pytest.mark.parametrize("softmax_output", [False, True], ids=["logits", "probabilities"])
def test_calibrating_an_import_stores_a_new_version_that_agents_serve_with_its_temperature(
        tmp_path: Path, softmax_output: bool) -> None:
    exported = export_module(Classifier(softmax=softmax_output), torch.zeros(2, 3, 16, 16), tmp_path / "mine.onnx",
                             input_name="pixels")
    assert import_model(tmp_path, exported, "--labels", str(labels_file(tmp_path, LABELS))).returncode == 0
    data = _overconfident_rows(exported, tmp_path / "val.npz")
    ran = _calibrate(tmp_path, data)
    assert ran.returncode == 0, ran.stderr
    store = ModelStore(tmp_path / "state" / "models")
    m = store.get(TASK, f"{TASK}-cloud").manifest
    assert m.version == 2 and m.parent_version == 1 and m.labels == LABELS  # the labels travel on
    assert m.temperature > 1.2 and m.recipe is not None and m.recipe["calibrated"] is True  # it was over-confident
    measured = m.recipe["calibration"]
    assert measured["rows"] == ROWS and measured["ece_after"] < measured["ece_before"] / 2
    assert f"ECE {measured['ece_before']:.4f} -> {measured['ece_after']:.4f}" in ran.stdout, ran.stdout
    with open_registry(str(tmp_path / "registry.db")) as registry:
        record = registry.model(TASK, f"{TASK}-cloud", 2)
        assert record is not None and record.state is ModelState.STAGED

    x = np.load(data)["x_val"][:8]
    raw = open_session(exported).run(None, {"pixels": x})[0]
    logits = np.log(raw) if softmax_output else raw
    with Agent(agent_profile(tmp_path, free_port(), name=f"{TASK}-cloud")) as agent:
        served = agent.local_model(TASK).batcher.call((x,)).outputs[0]
    np.testing.assert_allclose(served, softmax(logits, m.temperature), rtol=1e-4, atol=1e-6)
    y = np.load(data)["y_val"]
    all_raw = open_session(exported).run(None, {"pixels": np.load(data)["x_val"]})[0]
    all_logits = np.log(all_raw) if softmax_output else all_raw
    assert expected_calibration_error(all_logits, y, m.temperature) == pytest.approx(measured["ece_after"])


def _bad_data(tmp: Path) -> dict[str, tuple[Path, str]]:
    x = np.zeros((10, 3, 16, 16), np.float32)
    y = np.zeros(10, np.int64)
    cases: dict[str, tuple[dict[str, np.ndarray], str]] = {
        "no labels": ({"x_val": x}, "no array 'y_val'"),
        "wrong shape": ({"x_val": x[:, :, :8], "y_val": y}, "input 'pixels' takes ['batch', 3, 16, 16]"),
        "rows differ": ({"x_val": x, "y_val": y[:7]}, "has 10 rows and the labels 7"),
        "label past the classes": ({"x_val": x, "y_val": y + 4}, "class indices 0..3"),
        "float labels": ({"x_val": x, "y_val": y.astype(np.float32)}, "1-D integer array"),
        "NaN": ({"x_val": np.full_like(x, np.nan), "y_val": y}, "NaN or infinite"),
        "object array": ({"x_val": x, "y_val": np.array([None] * 10, dtype=object)}, "object arrays"),
    }
    out = {}
    for name, (arrays, says) in cases.items():
        path = tmp / f"{name.replace(' ', '-')}.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        out[name] = (path, says)
    text = tmp / "notes.npz"
    text.write_text("x,y\n1,2\n")
    out["not npz"] = (text, "not an .npz archive")
    out["missing"] = (tmp / "nowhere.npz", "no such file")
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One imported classifier for the bad-data cases (a refused calibration writes nothing, so they can share it)."""
    root = tmp_path_factory.mktemp("imported")
    exported = export_module(Classifier(softmax=False), torch.zeros(2, 3, 16, 16), root / "m.onnx",
                             input_name="pixels")
    assert import_model(root, exported).returncode == 0
    return root


@pytest.mark.parametrize("case", ["no labels", "wrong shape", "rows differ", "label past the classes", "float labels",
                                  "NaN", "object array", "not npz", "missing"])
def test_data_that_does_not_fit_the_model_writes_nothing_and_says_why(imported: Path, tmp_path: Path,
                                                                      case: str) -> None:
    data, says = _bad_data(tmp_path)[case]
    ran = _calibrate(imported, data)
    assert ran.returncode == 2 and says in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert ModelStore(imported / "state" / "models").versions(TASK, f"{TASK}-cloud") == [1]


def test_a_model_without_class_scores_or_not_in_the_store_is_refused(tmp_path: Path) -> None:
    embedder = export_module(Embedder(), torch.zeros(2, 12), tmp_path / "e.onnx")
    assert import_model(tmp_path, embedder, "--outputs", "other").returncode == 0
    np.savez(tmp_path / "d.npz", x_val=np.zeros((4, 12), np.float32), y_val=np.zeros(4, np.int64))
    other = _calibrate(tmp_path, tmp_path / "d.npz")
    assert other.returncode == 2 and "no class scores" in other.stderr, other.stderr
    absent = _calibrate(tmp_path, tmp_path / "d.npz", "--name", "nobody")
    assert absent.returncode == 2 and "no model gestures/nobody" in absent.stderr, absent.stderr
