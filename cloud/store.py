"""Writing the model store: each release gets the next version, written then renamed into place.

Layout (docs/MODEL_STORE.md): ``<root>/<task>/<name>/<version>/`` holding
``model.onnx``, ``manifest.json`` and, for trainable models, ``checkpoint.pt``.
A release directory appears whole or not at all (temp dir + rename), so a
reader never sees a manifest without its file.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from agent.manifest import MANIFEST_FILE, Manifest, OutputKind, sha256_file
from agent.model_store import ModelStore, StoredModel
from cloud.onnx_io import io_specs

DEFAULT_STORE = Path("store")
CHECKPOINT_FILE = "checkpoint.pt"


def default_store_root() -> Path:
    """``$FEDGE_STORE`` or ``./store``."""
    return Path(os.environ.get("FEDGE_STORE", DEFAULT_STORE))


def publish(
    store: ModelStore,
    task: str,
    name: str,
    onnx_file: Path,
    *,
    metrics: dict[str, float],
    recipe: dict[str, Any] | None = None,
    temperature: float = 1.0,
    output_kind: OutputKind | None = None,
    labels: list[str] | None = None,
    parent: Manifest | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> StoredModel:
    """Add ``onnx_file`` as the next version of ``task/name`` and return it; ValueError if it is no ONNX model."""
    inputs, outputs = io_specs(onnx_file)  # before anything is written: a file that is no model adds no version
    versions = store.versions(task, name)
    version = (versions[-1] + 1) if versions else 1
    model_dir = store.root / task / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".{version}-{secrets.token_hex(8)}"
    staging.mkdir()  # not mkdtemp: its 0700 would keep every other user (a service running serve) out of the release
    try:
        target = staging / "model.onnx"
        shutil.copyfile(onnx_file, target)
        manifest = Manifest(
            task=task,
            name=name,
            version=version,
            parent_name=parent.name if parent else None,
            parent_version=parent.version if parent else None,
            sha256=sha256_file(target),
            size_bytes=target.stat().st_size,
            inputs=inputs,
            outputs=outputs,
            metrics=metrics,
            recipe=recipe,
            temperature=temperature,
            output_kind=output_kind,
            labels=labels if labels is not None else parent.labels if parent else None,
        )
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        if checkpoint is not None:
            import torch  # here, not at the top: a version without a checkpoint (an import, a calibration) needs none

            torch.save(checkpoint, staging / CHECKPOINT_FILE)
        staging.rename(model_dir / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return StoredModel(manifest, model_dir / str(version))


def load_checkpoint(stored: StoredModel) -> dict[str, Any]:
    """The fp32 checkpoint saved with a model (state dict and architecture)."""
    path = stored.directory / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {stored.manifest.task}/{stored.manifest.name} has no checkpoint")
    import torch

    return torch.load(path, weights_only=False)
