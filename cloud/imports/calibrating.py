"""`models calibrate`: fit an imported classifier's temperature on the user's labelled data, as a new version.

An imported model arrives uncalibrated (temperature 1): its "90 % sure" may be right half the time, and
every offload threshold in a profile reads that number. One temperature T, fitted on held-out labelled
rows by negative log-likelihood (cloud/compress/calibration.py, as the zoo's models are), makes
softmax(logits / T) mean what it says. For a model that ends in its own Softmax, T applies to the log of
its probabilities. The model file is unchanged; the new version's manifest carries T, the data's row
count and the ECE before and after, and its parent is the version it calibrates.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.manifest import ManifestError, TensorSpec
from agent.model_store import ModelStore, StoredModel
from agent.session import open_session
from cloud.compress.calibration import expected_calibration_error, fit_temperature
from cloud.registry import ModelState, Registry
from cloud.store import publish

BATCH = 256  # rows per run: a user's validation set may not fit one batch in memory


class CalibrationRefused(ValueError):
    """The model or the data cannot be calibrated as given; the message says why."""


@dataclass(frozen=True)
class Calibrated:
    """The new version and what calibrating it measured."""

    stored: StoredModel
    rows: int
    accuracy: float
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float


def calibrate(store: ModelStore, registry: Registry, task: str, name: str, data: Path,
              version: int | None = None) -> Calibrated:
    """Fit ``task/name``'s temperature (newest version unless given) on ``data`` and store it as the next version."""
    try:
        current = store.verified(task, name, version)
    except ManifestError as exc:  # no such model or version (ModelNotFound), or a file that does not match
        raise CalibrationRefused(str(exc)) from None
    m = current.manifest
    if m.kind == "other":
        raise CalibrationRefused(f"{task}/{name} v{m.version} has no class scores (its first output is 'other'):"
                                 " there is no confidence to calibrate")
    classes = m.outputs[0].shape[-1]
    feed, labels = load_labelled(data, m.inputs, classes if isinstance(classes, int) else None)
    scores = _first_output(current, feed)
    if labels.max() >= scores.shape[-1]:
        raise CalibrationRefused(f"{data}: label {int(labels.max())} is past the model's {scores.shape[-1]} classes")
    logits = scores if m.kind == "logits" else np.log(np.clip(scores, 1e-12, None))
    fit = fit_temperature(logits, labels)
    ece_before, ece_after = (expected_calibration_error(logits, labels, t) for t in (1.0, fit.temperature))
    accuracy = float((scores.argmax(axis=1) == labels).mean())
    measured = {"data": data.name, "rows": len(labels), "temperature": fit.temperature, "ece_before": ece_before,
                "ece_after": ece_after, "nll_before": fit.nll_before, "nll_after": fit.nll_after}
    stored = publish(store, task, name, current.model_path,
                     metrics={**m.metrics, "validation_accuracy": accuracy, "ece": ece_after},
                     recipe={**(m.recipe or {}), "calibrated": True, "calibration": measured},
                     temperature=fit.temperature, output_kind=m.output_kind, parent=m)
    registry.add_model(task, name, stored.manifest.version, ModelState.STAGED, stored.manifest.metrics)
    return Calibrated(stored, len(labels), accuracy, fit.temperature, ece_before, ece_after, fit.nll_before,
                      fit.nll_after)


def load_labelled(path: Path, inputs: list[TensorSpec], classes: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs by name and integer labels from an ``.npz``; CalibrationRefused naming what does not fit.

    Arrays: one per input named as the input, or ``x_val`` (else ``x``) for a model with one input; labels
    ``y_val`` (else ``y``).
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CalibrationRefused(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile):
        raise CalibrationRefused(f"{path}: not an .npz archive (write one with numpy.savez)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CalibrationRefused(f"{path}: a single array; calibration needs inputs and labels (numpy.savez)")
    with archive:
        held = set(archive.files)
        wanted = {s.name: s.name if s.name in held or len(inputs) > 1 else next(
            (k for k in ("x_val", "x") if k in held), s.name) for s in inputs}
        label_key = next((k for k in ("y_val", "y") if k in held), "y_val")
        missing = [key for key in (*wanted.values(), label_key) if key not in held]
        if missing:
            raise CalibrationRefused(f"{path}: no array {missing[0]!r} (it holds {sorted(held)}): give x_val and"
                                     " y_val, or one array per input name and y_val")
        try:
            arrays = {name: archive[key] for name, key in wanted.items()}
            labels = archive[label_key]
        except ValueError:  # an object array: it would need pickle, which is never loaded
            raise CalibrationRefused(f"{path}: holds object arrays; save plain numeric arrays") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) == 0:
        raise CalibrationRefused(f"{path}: labels must be a non-empty 1-D integer array, got {labels.dtype}"
                                 f" {list(labels.shape)}")
    if labels.min() < 0 or (classes is not None and labels.max() >= classes):
        raise CalibrationRefused(f"{path}: labels must be class indices 0..{(classes or 0) - 1 if classes else 'C-1'},"
                                 f" found {int(labels.min())}..{int(labels.max())}")
    return {s.name: _input(path, wanted[s.name], arrays[s.name], s, len(labels)) for s in inputs}, labels


def _input(path: Path, key: str, array: np.ndarray, spec: TensorSpec, rows: int) -> np.ndarray:
    """One input array as the model takes it."""
    want = np.dtype(spec.dtype)
    if array.dtype.kind != want.kind and not (want.kind == "f" and array.dtype.kind in "iu"):
        raise CalibrationRefused(f"{path}: {key!r} is {array.dtype}; input {spec.name!r} takes {spec.dtype}")
    if len(array) != rows:
        raise CalibrationRefused(f"{path}: {key!r} has {len(array)} rows and the labels {rows}")
    fixed = spec.shape[1:]
    if array.ndim != len(spec.shape) or any(d is not None and d != a for d, a in zip(fixed, array.shape[1:],
                                                                                     strict=True)):
        shown = ["batch" if d is None else d for d in spec.shape]
        raise CalibrationRefused(f"{path}: {key!r} has shape {list(array.shape)}; input {spec.name!r} takes {shown}")
    array = array.astype(want, copy=False)
    if want.kind == "f" and not np.isfinite(array).all():
        raise CalibrationRefused(f"{path}: {key!r} holds NaN or infinite values")
    return array


def _first_output(stored: StoredModel, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = open_session(stored.model_path)
    rows = len(next(iter(feed.values())))
    parts = [session.run(None, {k: v[i:i + BATCH] for k, v in feed.items()})[0] for i in range(0, rows, BATCH)]
    return np.concatenate(parts).reshape(rows, -1)
