"""`models import`: a user's ONNX file into the store and the registry, or nothing written at all."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from agent.manifest import OutputKind, TensorSpec
from agent.model_store import ModelStore, StoredModel
from cloud.imports.inspection import ImportRefused, Inspected, inspect_model
from cloud.imports.labels import read_labels
from cloud.registry import ModelState, Registry
from cloud.store import publish


def import_model(store: ModelStore, registry: Registry, task: str, name: str, source: Path,
                 told: OutputKind | None = None, labels_file: Path | None = None) -> tuple[StoredModel, Inspected]:
    """Add ``source`` as the next version of ``task/name`` (staged in the registry); ImportRefused when it cannot be.

    ``labels_file``: the classes' names (cloud/imports/labels.py). The version says it is uncalibrated
    (temperature 1) until ``fedge-cloud models calibrate`` fits one on the user's data.

    The file is copied first and the copy is checked and stored: a file that changes or vanishes while
    this runs cannot be stored other than it was checked.
    """
    with tempfile.TemporaryDirectory(prefix="fedge-import-") as tmp:
        copy = Path(tmp) / "model.onnx"
        try:
            shutil.copyfile(source, copy)
        except OSError as exc:
            raise ImportRefused(f"{source}: cannot be read: {exc.strerror or exc}") from None
        inspected = inspect_model(copy, told)
        labels = read_labels(labels_file, inspected) if labels_file is not None else None
        _check_same_inputs(store, task, name, inspected)
        stored = publish(store, task, name, copy, metrics={}, recipe={"imported": source.name, "calibrated": False},
                         output_kind=inspected.output_kind, labels=labels)
    registry.add_model(task, name, stored.manifest.version, ModelState.STAGED, {})
    return stored, inspected


def _check_same_inputs(store: ModelStore, task: str, name: str, inspected: Inspected) -> None:
    """A new version of an existing name takes the same inputs: agents following the name send what it took."""
    versions = store.versions(task, name)
    if not versions:
        return
    newest = store.get(task, name, versions[-1]).manifest
    if newest.inputs != inspected.inputs:
        raise ImportRefused(f"{task}/{name} v{newest.version} takes {_described(newest.inputs)}; this file takes"
                            f" {_described(inspected.inputs)}: import it under another --name")


def _described(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.dtype}{['batch' if d is None else d for d in s.shape]}" for s in specs)
