"""Compression on small, quickly trained models: pruning, quantization, calibration, the compress command."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from agent.config.problems import ConfigError
from agent.model_store import ModelStore
from agent.session import open_session
from cloud.compress.base_models import trained_model
from cloud.compress.calibration import fit_temperature, nll
from cloud.compress.distill import DistillSettings, distillation_gain
from cloud.compress.measure import accuracy, flops, parameter_counts
from cloud.compress.prune import apply_unstructured, make_permanent, prune_structured, sparsity_of
from cloud.compress.quantize import dynamic_int8, fp16, initializer_types, static_int8
from cloud.compress.recipe import load_recipe
from cloud.export import export_onnx
from cloud.zoo.pipeline import train_and_publish
from cloud.zoo.tasks import DataOptions, get_task

DATA = DataOptions()  # what `fedge-cloud compress` loads: it refuses models trained on other data options
FEDGE_CLOUD = str(Path(sys.executable).with_name("fedge-cloud"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A store with a briefly trained MNIST-1D cloud and edge model."""
    store = ModelStore(tmp_path_factory.mktemp("compress") / "store")
    for role in ("cloud", "edge"):
        train_and_publish(store, "mnist1d", role, epochs=8, data=DATA, progress=False)
    return store


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return get_task("mnist1d").load(DATA)


def test_structured_pruning_really_removes_parameters_and_flops(store: ModelStore, tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    _, model, config = trained_model(store, "mnist1d", "cloud")
    same, _ = prune_structured(model, config, 1.0)
    x = torch.from_numpy(data.x_test[:16])
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x))  # keeping everything copies every weight to its place
    narrow, narrow_config = prune_structured(model, config, 0.5, norm="l2")
    assert narrow_config.channels == tuple(c // 2 for c in config.channels)
    full_file = export_onnx(model, config, tmp_path / "full.onnx")
    narrow_file = export_onnx(narrow, narrow_config, tmp_path / "narrow.onnx")
    assert parameter_counts(narrow_file)[0] < 0.5 * parameter_counts(full_file)[0]
    assert flops(narrow_file) < 0.5 * flops(full_file)
    assert narrow_file.stat().st_size < full_file.stat().st_size
    session = ort.InferenceSession(str(narrow_file), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": data.x_test[:4]})[0].shape == (4, 10)


def test_unstructured_pruning_zeroes_weights_but_not_the_file(store: ModelStore, tmp_path: Path) -> None:
    _, model, config = trained_model(store, "mnist1d", "cloud")
    make_permanent(apply_unstructured(model, 0.6, scope="global"))
    assert sparsity_of(model) == pytest.approx(0.6, abs=0.01)
    path = export_onnx(model, config, tmp_path / "sparse.onnx")
    total, nonzero = parameter_counts(path)
    assert nonzero < 0.5 * total


def test_quantized_variants_carry_int8_or_fp16_weights_and_stay_accurate(store: ModelStore, tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    source = store.get("mnist1d", "mnist1d-cloud").model_path
    reference = accuracy(source, data.x_test, data.y_test)
    dynamic = dynamic_int8(source, tmp_path / "dynamic.onnx")
    static = static_int8(source, tmp_path / "static.onnx", data.x_train[:128], method="entropy", per_channel=True)
    half = fp16(source, tmp_path / "fp16.onnx")
    assert "INT8" in initializer_types(dynamic) and "INT8" in initializer_types(static)
    assert initializer_types(half) == {"FLOAT16"}
    for path in (dynamic, static, half):
        assert path.stat().st_size < source.stat().st_size
        assert (reference - accuracy(path, data.x_test, data.y_test)) * 100 <= 2.0  # within a 2-point budget
    session = open_session(half)
    assert session.get_inputs()[0].type == "tensor(float)"


def test_temperature_calibration_lowers_nll() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2000, 10)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(10, p=p) for p in probs])  # calibrated by construction
    calibrated = fit_temperature(logits, labels)
    assert calibrated.temperature == pytest.approx(1.0, abs=0.15)
    overconfident = fit_temperature(logits * 4, labels)
    assert overconfident.temperature > 3
    assert overconfident.nll_after < overconfident.nll_before
    assert overconfident.nll_after == pytest.approx(nll(logits * 4, labels, overconfident.temperature))


def test_distillation_reports_its_gain(store: ModelStore, data) -> None:  # type: ignore[no-untyped-def]
    _, teacher, _ = trained_model(store, "mnist1d", "cloud")
    student, gain = distillation_gain(get_task("mnist1d").models["edge"], teacher, data, DistillSettings(epochs=2), seed=0)
    assert 0.0 <= gain.distilled_accuracy <= 1.0 and 0.0 <= gain.hard_label_accuracy <= 1.0
    assert gain.gain == pytest.approx(gain.distilled_accuracy - gain.hard_label_accuracy)
    with torch.no_grad():
        assert student(torch.from_numpy(data.x_test[:3])).shape == (3, 10)


def test_session_drops_a_missing_provider_with_one_warning(store: ModelStore, caplog: pytest.LogCaptureFixture) -> None:
    path = store.get("mnist1d", "mnist1d-edge").model_path
    with caplog.at_level(logging.WARNING, logger="agent.session"):
        session = open_session(path, [("TensorrtExecutionProvider", {}), ("CUDAExecutionProvider", {"device_id": "0"})],
                               intra_op_threads=2)
    assert session.get_providers() == ["CPUExecutionProvider"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "TensorrtExecutionProvider" in warnings[0].getMessage() and "CUDAExecutionProvider" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("prunning: {}\n", "1:1: prunning: unknown key (did you mean 'pruning'?)"),
        ("pruning: {structured: {keep_ratios: [1.5]}}\n", "1:38: pruning.structured.keep_ratios[0]: 1.5 is out of range"),
        ("quantization: {modes: [int4]}\n", "quantization.modes[0]: 'int4' is not allowed"),
        ("base: [\n", "YAML syntax error"),
        ("validation_split: 0.1\n", "validation_split: removed: compress holds out the last 10% of the training set"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words)) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def _compress(store: ModelStore, tmp_path: Path, recipe: str, budget: str) -> subprocess.CompletedProcess[str]:
    copy = tmp_path / "store"
    shutil.copytree(store.root, copy)
    (tmp_path / "recipe.yaml").write_text(recipe)
    return subprocess.run(
        [FEDGE_CLOUD, "compress", "--task", "mnist1d", "--recipe", str(tmp_path / "recipe.yaml"), "--store", str(copy),
         "--out", str(tmp_path / "report"), "--max-accuracy-drop", budget],
        capture_output=True, check=False, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


QUICK = """
base: cloud
distillation: {temperature: 4, alpha: 0.7}
pruning: {structured: {keep_ratios: [1.0, 0.5]}, unstructured: {sparsities: []}, finetune_epochs: 2}
quantization: {modes: [fp32, static], calibration: [minmax], per_channel: [false], calibration_samples: 64}
latency_repeats: 5
"""


def test_compress_releases_the_chosen_variant_with_its_report(store: ModelStore, tmp_path: Path) -> None:
    result = _compress(store, tmp_path, QUICK, "100")
    assert result.returncode == 0, result.stderr
    assert "chosen" in result.stdout and "released mnist1d/mnist1d-edge v2" in result.stdout
    for name in ("report.json", "report.md", "report.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    released = ModelStore(tmp_path / "store").verified("mnist1d", "mnist1d-edge")
    manifest = released.manifest
    assert manifest.version == 2 and manifest.parent_name == "mnist1d-cloud"
    assert manifest.recipe is not None and manifest.recipe["variant"] in (tmp_path / "report" / "report.md").read_text()
    assert manifest.temperature != 1.0
    assert manifest.metrics["validation_drop_points"] <= 100 and "accuracy_drop_points" in manifest.metrics
    assert manifest.recipe["trained"] == DATA.split_record()  # the release can be compressed again


def _edit_trained(store_root: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest_file = store_root / "mnist1d" / name / "1" / "manifest.json"
    doc = json.loads(manifest_file.read_text())
    edit(doc["recipe"]["trained"])
    manifest_file.write_text(json.dumps(doc))


@pytest.mark.parametrize(("name", "edit", "words"), [
    ("mnist1d-cloud", lambda t: t.pop("held_out"), "not trained with the last 10% of the training set held out"),
    ("mnist1d-cloud", lambda t: t.update(held_out=0.2), "recipe.trained.held_out: 0.2"),
    ("mnist1d-cloud", lambda t: t.update(data={"train_size": 1000, "test_size": 300, "seed": 42}),
     "trained on other data options"),
])
def test_a_model_that_may_have_trained_on_the_validation_rows_is_refused(
        store: ModelStore, tmp_path: Path, name: str, edit: Callable[[dict[str, Any]], None], words: str) -> None:
    """A store from before the zoo held data out (or trained on other sizes) would bias the choice silently."""
    shutil.copytree(store.root, tmp_path / "old")
    _edit_trained(tmp_path / "old", name, edit)
    result = _compress(ModelStore(tmp_path / "old"), tmp_path, QUICK, "100")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"mnist1d/{name} v1" in result.stderr and words in result.stderr, result.stderr
    assert "fedge-cloud train --task mnist1d --model cloud" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "report").exists()


def test_the_teacher_is_checked_only_when_it_teaches(store: ModelStore, tmp_path: Path) -> None:
    from cloud.compress.base_models import NoModelToCompress
    from cloud.compress.recipe import Recipe
    from cloud.compress.search import search

    shutil.copytree(store.root, tmp_path / "old")
    _edit_trained(tmp_path / "old", "mnist1d-cloud", lambda t: t.pop("held_out"))
    old = ModelStore(tmp_path / "old")
    recipe = Recipe.model_validate({**yaml.safe_load(QUICK), "base": "edge"})
    with pytest.raises(NoModelToCompress, match="mnist1d/mnist1d-cloud v1"):
        search(old, "mnist1d", recipe, tmp_path / "taught", max_drop_points=100, data=DATA, log=lambda _: None)
    alone = search(old, "mnist1d", recipe.model_copy(update={"distillation": None}), tmp_path / "alone",
                   max_drop_points=100, data=DATA, log=lambda _: None)
    assert alone.chosen is not None


def test_the_choice_follows_validation_accuracy_when_the_test_set_disagrees() -> None:
    from cloud.compress.measure import Measurement
    from cloud.compress.search import Variant, choose

    def variant(name: str, validation: float, test: float, latency: float, size: int) -> Variant:
        m = Measurement(size_bytes=size, parameters=1, nonzero_parameters=1, flops=1, accuracy=test,
                        validation_accuracy=validation, latency_b1_ms=latency, latency_b32_ms=latency)
        return Variant(name, "fp32", Path(f"{name}.onnx"), m, get_task("mnist1d").models["edge"], torch.nn.Identity())

    reference = variant("reference", 0.90, 0.90, 4.0, 100)
    test_favourite = variant("test-favourite", 0.85, 0.99, 1.0, 50)  # best on test, 5 points down on validation
    fast = variant("fast", 0.895, 0.80, 2.0, 50)  # worst on test, within 1 point on validation
    dominated = variant("dominated", 0.892, 0.98, 2.5, 60)  # better than fast on test, worse everywhere else
    within, pareto, chosen = choose(reference.measurement, [reference, test_favourite, fast, dominated], 1.0)
    assert [v.pruning for v in within] == ["reference", "fast", "dominated"]
    assert [v.pruning for v in pareto] == ["reference", "fast"]
    assert chosen is fast


def test_compress_with_no_variant_in_budget_names_the_best(store: ModelStore, tmp_path: Path) -> None:
    recipe = QUICK.replace("keep_ratios: [1.0, 0.5]", "keep_ratios: [0.1]").replace("finetune_epochs: 2", "finetune_epochs: 0")
    result = _compress(store, tmp_path, recipe, "0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no variant within 0.5 points; the best was channels10-l1+" in result.stderr
    assert "Traceback" not in result.stderr
    assert ModelStore(tmp_path / "store").versions("mnist1d", "mnist1d-edge") == [1]


def test_search_chooses_on_validation_data_never_on_the_test_set(
        store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloud.compress.recipe import Recipe
    from cloud.compress.search import search
    from cloud.zoo.tasks import TASKS, Dataset

    recipe = Recipe.model_validate(yaml.safe_load(QUICK))
    honest = search(store, "mnist1d", recipe, tmp_path / "honest", max_drop_points=0.5, data=DATA, log=lambda _: None)
    assert [v.name for v in honest.within_budget] == [
        v.name for v in honest.variants if honest.validation_drop_points(v) <= 0.5]

    load = get_task("mnist1d").load

    def scrambled_test_labels(options: DataOptions) -> Dataset:
        d = load(options)
        return Dataset(d.x_train, d.y_train, d.x_test, np.roll(d.y_test, 1))

    monkeypatch.setitem(TASKS, "mnist1d", dataclasses.replace(TASKS["mnist1d"], load=scrambled_test_labels))
    blind = search(store, "mnist1d", recipe, tmp_path / "blind", max_drop_points=0.5, data=DATA, log=lambda _: None)
    assert blind.reference.measurement.accuracy < honest.reference.measurement.accuracy - 0.3  # the test set changed
    assert [v.name for v in blind.within_budget] == [v.name for v in honest.within_budget]  # the choice did not


def test_compress_reports_each_variant_before_fine_tuning_the_next(store: ModelStore, tmp_path: Path) -> None:
    """Fine-tuning takes minutes per variant on a small CPU: the user sees each step as it starts and ends."""
    from cloud.compress.recipe import Recipe
    from cloud.compress.search import search

    recipe = Recipe.model_validate({
        "distillation": None, "latency_repeats": 5, "quantization": {"modes": ["fp32"]},
        "pruning": {"structured": {"keep_ratios": [1.0, 0.5]}, "unstructured": {"sparsities": []}, "finetune_epochs": 1},
    })
    lines: list[str] = []
    search(store, "mnist1d", recipe, tmp_path / "variants", max_drop_points=100, data=DATA, log=lines.append)
    assert [line.split()[0] for line in lines] == ["base", "none+fp32", "fine-tuning", "channels50-l1+fp32"], lines
    assert lines[0].strip() == "base mnist1d-cloud v1, teacher mnist1d-cloud v1"  # fedge trained it: no caveat
    assert lines[2] == "  fine-tuning channels50-l1 (1 epochs)"


@pytest.mark.parametrize("budget", ["-5", "nan"])
def test_a_budget_no_variant_could_meet_is_refused_before_any_work(store: ModelStore, tmp_path: Path, budget: str) -> None:
    result = _compress(store, tmp_path, QUICK, budget)
    assert result.returncode == 2 and "--max-accuracy-drop must be 0 or more" in result.stderr, result.stderr
    assert not (tmp_path / "report").exists()  # refused before the search started
