"""The model zoo: generated data, deterministic training, ONNX export, the store and its CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from agent.federated.architectures import ArchConfig, build
from agent.manifest import ManifestError, sha256_file, verify_file
from agent.model_store import ModelNotFound, ModelStore
from cloud.export import export_onnx
from cloud.store import load_checkpoint
from cloud.zoo.augment import shift_images
from cloud.zoo.mnist1d import Mnist1dParams, generate
from cloud.zoo.pipeline import train_and_publish
from cloud.zoo.tasks import VALIDATION_FRACTION, DataOptions, UnknownTask, get_task

SMALL = DataOptions(train_size=400, test_size=200)
FEDGE_CLOUD = str(Path(sys.executable).with_name("fedge-cloud"))


def test_mnist1d_is_deterministic_for_a_seed() -> None:
    a = generate(Mnist1dParams(num_samples=300, seed=3))
    b = generate(Mnist1dParams(num_samples=300, seed=3))
    c = generate(Mnist1dParams(num_samples=300, seed=4))
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(a[0], c[0])
    x_train, y_train, x_test, y_test = a
    assert x_train.shape == (240, 40) and x_test.shape == (60, 40)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert sorted(np.unique(np.concatenate([y_train, y_test]))) == list(range(10))
    assert np.bincount(np.concatenate([y_train, y_test])).tolist() == [30] * 10


def test_default_sizes_follow_the_paper() -> None:
    data = get_task("mnist1d").load(DataOptions())
    assert (len(data.y_train), len(data.y_test)) == (4000, 1000)
    digits = get_task("digits").load(DataOptions())
    assert digits.x_train.shape[1:] == (1, 8, 8) and digits.x_train.min() >= 0.0 and digits.x_train.max() <= 1.0


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(UnknownTask, match=re.escape("the zoo's tasks: digits, mnist1d; a task of your own is declared in"
                                                    " tasks/cifar.yaml")):
        get_task("cifar")


@pytest.mark.parametrize("task", ["mnist1d", "digits"])
def test_exported_onnx_matches_torch(task: str, tmp_path: Path) -> None:
    config = get_task(task).models["cloud"]
    model = build(config).eval()
    path = export_onnx(model, config, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((5, *config.input_shape)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, model(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_shifted_digits_move_by_at_most_one_pixel_and_keep_their_ink() -> None:
    x = torch.zeros((200, 1, 8, 8))
    x[:, 0, 3:5, 3:5] = torch.rand((200, 2, 2)) + 0.1  # ink away from the border: no shift can crop it
    shifted = shift_images(x, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    torch.testing.assert_close(shifted.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    offsets = set()
    for before, after in zip(x, shifted, strict=True):
        (y0, x0), (y1, x1) = before[0].nonzero()[0].tolist(), after[0].nonzero()[0].tolist()
        offsets.add((y1 - y0, x1 - x0))
        torch.testing.assert_close(after[0, y1:y1 + 2, x1:x1 + 2], before[0, 3:5, 3:5])
    assert offsets == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}  # all nine, none further
    torch.testing.assert_close(shift_images(x, torch.Generator().manual_seed(0)), shifted)  # the seed decides


def test_zoo_models_never_train_on_the_validation_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compression chooses variants on the end of the training set: the zoo must leave it unseen."""
    import cloud.zoo.pipeline as pipeline

    seen: list[np.ndarray] = []
    real = pipeline.train_classifier

    def spy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> torch.nn.Module:
        seen.append(x.copy())
        return real(model, x, y, **kwargs)

    monkeypatch.setattr(pipeline, "train_classifier", spy)
    store = ModelStore(tmp_path / "store")
    result = train_and_publish(store, "mnist1d", "edge", epochs=1, data=SMALL, progress=False)
    full = get_task("mnist1d").load(SMALL)
    _, (x_val, _) = full.validation_split()
    assert len(x_val) == int(len(full.y_train) * VALIDATION_FRACTION) > 0
    (trained_x,) = seen
    trained_rows = {row.tobytes() for row in trained_x}
    assert not any(row.tobytes() in trained_rows for row in x_val)  # no held-out row reached training
    assert len(trained_x) == len(full.y_train) - len(x_val)  # and every other training row did
    assert result.stored.manifest.recipe is not None
    trained = result.stored.manifest.recipe["trained"]
    assert trained["held_out"] == VALIDATION_FRACTION and trained["train_rows"] == len(trained_x)
    assert trained["data"] == {"train_size": 400, "test_size": 200, "seed": 42}  # as given, for compress to compare


@pytest.mark.parametrize(("sizes", "words"), [
    (["--train-size", "1"], "at least 100 are needed"),
    (["--train-size", "5", "--test-size", "4"], "9 samples in all are too few"),
])
def test_cli_train_refuses_data_too_small_to_hold_out(tmp_path: Path, sizes: list[str], words: str) -> None:
    result = subprocess.run([FEDGE_CLOUD, "train", "--task", "mnist1d", "--model", "edge", *sizes, "--no-progress",
                             "--store", str(tmp_path / "store")], capture_output=True, check=False, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and "--train-size" in result.stderr and "Traceback" not in result.stderr


def test_cli_train_names_what_could_not_be_written(tmp_path: Path) -> None:
    """The store's own directory is "cannot write the store"; a later OSError names its file instead."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable = subprocess.run([FEDGE_CLOUD, "train", "--task", "digits", "--model", "edge", "--no-progress",
                                 "--store", str(blocker / "store")], capture_output=True, check=False, text=True,
                                timeout=60)
    assert unwritable.returncode == 2
    assert f"cannot write the store {blocker / 'store'}: Not a directory: {blocker / 'store'}" in unwritable.stderr
    store = tmp_path / "store"
    store.mkdir()
    (store / "digits").write_text("")  # the store is writable; the task's directory cannot be made
    late = subprocess.run([FEDGE_CLOUD, "train", "--task", "digits", "--model", "edge", "--epochs", "1", "--no-progress",
                           "--store", str(store)], capture_output=True, check=False, text=True, timeout=120)
    assert late.returncode == 1, late.stderr
    assert f"digits/edge not released: Not a directory: {store / 'digits' / 'digits-edge'}" in late.stderr, late.stderr
    assert "cannot write the store" not in late.stderr and "Traceback" not in late.stderr


def test_same_seed_same_model_and_store_release(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    first = train_and_publish(store, "mnist1d", "edge", epochs=6, seed=7, data=SMALL, progress=False)
    second = train_and_publish(store, "mnist1d", "edge", epochs=6, seed=7, data=SMALL, progress=False)
    assert first.test_accuracy == second.test_accuracy
    assert first.test_accuracy > 0.3  # learned something: chance is 10%
    assert (first.stored.manifest.version, second.stored.manifest.version) == (1, 2)
    m = second.stored.manifest
    assert m.sha256 == sha256_file(second.stored.model_path)
    assert m.inputs[0].shape == [None, 40] and m.outputs[0].shape == [None, 10]
    verify_file(m, second.stored.model_path)
    checkpoint = load_checkpoint(second.stored)
    rebuilt = build(ArchConfig.from_dict(checkpoint["arch"]))
    rebuilt.load_state_dict(checkpoint["state_dict"])
    assert store.get("mnist1d", "mnist1d-edge").manifest.version == 2


def test_corrupt_and_truncated_files_are_named(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    stored = train_and_publish(store, "digits", "edge", epochs=1, seed=0, data=SMALL, progress=False).stored
    blob = stored.model_path.read_bytes()
    stored.model_path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ManifestError, match=f"{stored.model_path}.*truncated"):
        store.verified("digits", "digits-edge")
    stored.model_path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(ManifestError, match="sha256"):
        store.verified("digits", "digits-edge")
    with pytest.raises(ModelNotFound, match="digits/digits-edge"):
        store.get("digits", "digits-cloud")
    manifest_file = stored.directory / "manifest.json"
    manifest_file.write_text(manifest_file.read_text()[:40])
    result = subprocess.run([FEDGE_CLOUD, "models", "list", "--store", str(store.root)],
                            capture_output=True, check=False, text=True, timeout=60)
    assert result.returncode == 2
    assert str(manifest_file) in result.stderr and "Traceback" not in result.stderr


def test_cli_train_and_list(tmp_path: Path) -> None:
    store = tmp_path / "store"
    train = subprocess.run(
        [FEDGE_CLOUD, "train", "--task", "digits", "--model", "edge", "--epochs", "1", "--store", str(store),
         "--no-progress"], capture_output=True, check=False, text=True, timeout=120,
    )
    assert train.returncode == 0, train.stderr
    assert "digits/digits-edge v1" in train.stdout
    listing = subprocess.run([FEDGE_CLOUD, "models", "list", "--json", "--store", str(store)],
                             capture_output=True, check=False, text=True, timeout=60)
    rows = json.loads(listing.stdout)
    assert [(r["task"], r["name"], r["version"]) for r in rows] == [("digits", "digits-edge", 1)]
    assert 0.0 <= rows[0]["metrics"]["test_accuracy"] <= 1.0


def test_cli_unknown_task_exits_2_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run([FEDGE_CLOUD, "train", "--task", "cifar", "--model", "edge", "--store", str(tmp_path)],
                            capture_output=True, check=False, text=True, timeout=60)
    assert result.returncode == 2
    assert "the zoo's tasks: digits, mnist1d" in result.stderr and "Traceback" not in result.stderr
