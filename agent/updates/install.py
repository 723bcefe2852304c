"""Putting a release's files into the agent's model store so that a crash never leaves a bad model.

A new version is written under ``<store>/.staging/`` (a temp directory, each
file fsynced, then renamed), loaded and judged from there, and only then
renamed into ``<store>/<task>/<name>/<version>`` in one step. The agent starts
with the newest version in the store, so whatever moment it is killed at, it
restarts with either the old model or the complete new one; leftovers in
``.staging`` are removed at the next start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from agent.durable import sync_directory, write_temp
from agent.manifest import MANIFEST_FILE, Manifest, ManifestError, file_in
from agent.model_store import ModelStore

STAGING = ".staging"


def staging_store(store: ModelStore) -> ModelStore:
    """The store-shaped directory new versions are written to and loaded from before they go live."""
    return ModelStore(store.root / STAGING)


def _check_artifact(manifest: Manifest, data: bytes) -> None:
    """The downloaded bytes are the file the manifest describes (size and sha256), before any is written."""
    what = f"model file of {manifest.task}/{manifest.name} v{manifest.version}"
    if len(data) != manifest.size_bytes:
        raise ManifestError(f"{what}: {len(data)} bytes, the signed manifest says {manifest.size_bytes}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.sha256:
        raise ManifestError(f"{what}: sha256 {actual[:12]}… does not match the signed manifest's"
                            f" {manifest.sha256[:12]}… (tampered or corrupted)")


def stage(store: ModelStore, manifest: Manifest, data: bytes) -> Path:
    """Write the model and its manifest to ``.staging/<task>/<name>/<version>``, durably; returns that path.

    The bytes are checked here, once, while they are in memory; loading from the staging store
    (``LocalModel.load``) verifies the written file, so nothing is hashed a third time.
    """
    _check_artifact(manifest, data)
    parent = staging_store(store).root / manifest.task / manifest.name
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / str(manifest.version)
    if target.exists():
        shutil.rmtree(target)
    partial = Path(tempfile.mkdtemp(prefix=f".{manifest.version}-", dir=parent))
    try:
        target_file = file_in(partial, manifest.file)
        os.replace(write_temp(target_file, data), target_file)
        os.replace(write_temp(partial / MANIFEST_FILE, manifest.to_json().encode()), partial / MANIFEST_FILE)
        sync_directory(partial)
        partial.rename(target)
        sync_directory(parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def promote(store: ModelStore, manifest: Manifest) -> Path:
    """Move a staged version into the store in one rename; from now on a restart serves it."""
    source = staging_store(store).root / manifest.task / manifest.name / str(manifest.version)
    parent = store.root / manifest.task / manifest.name
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / str(manifest.version)
    if target.exists():
        raise ManifestError(f"{target} already exists; a released version is never overwritten")
    source.rename(target)
    sync_directory(parent)
    return target


def discard(store: ModelStore, manifest: Manifest) -> None:
    """Forget a staged version that was refused."""
    shutil.rmtree(staging_store(store).root / manifest.task / manifest.name / str(manifest.version),
                  ignore_errors=True)


def retire_newer(store: ModelStore, task: str, name: str, version: int) -> list[int]:
    """Take every version above ``version`` out of the store (a rollback), each in one rename."""
    retired = [v for v in store.versions(task, name) if v > version]
    graveyard = staging_store(store).root / "retired"
    graveyard.mkdir(parents=True, exist_ok=True)
    for v in retired:
        (store.root / task / name / str(v)).rename(graveyard / f"{task}-{name}-{v}-{uuid.uuid4().hex[:8]}")
    sync_directory(store.root / task / name)
    shutil.rmtree(graveyard, ignore_errors=True)
    return retired


def clean_staging(store: ModelStore) -> None:
    """Remove what an interrupted update left behind (run before updates start)."""
    shutil.rmtree(staging_store(store).root, ignore_errors=True)


