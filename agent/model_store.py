"""Reading the model store: ``<root>/<task>/<name>/<version>/{model.onnx, manifest.json}``.

The agent only reads (and verifies) what the cloud wrote; writing lives in
``cloud.store``. docs/MODEL_STORE.md describes the layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.decimal_text import decimal
from agent.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    file_in,
    load_manifest,
    verify_file,
)


class ModelNotFound(ManifestError):
    """No such task, model or version in the store; the message lists what there is."""


@dataclass(frozen=True)
class StoredModel:
    """A manifest and the directory holding its files."""

    manifest: Manifest
    directory: Path

    @property
    def model_path(self) -> Path:
        """The model file, never outside ``directory`` whatever the manifest says."""
        return file_in(self.directory, self.manifest.file)


class ModelStore:
    """Read access to a model store directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def tasks(self) -> list[str]:
        """Task directories; dot-directories (an agent's ``.staging`` for downloads) are not tasks."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def names(self, task: str) -> list[str]:
        task_dir = self.root / task
        return sorted(p.name for p in task_dir.iterdir() if p.is_dir()) if task_dir.is_dir() else []

    def versions(self, task: str, name: str) -> list[int]:
        model_dir = self.root / task / name
        if not model_dir.is_dir():
            return []
        return sorted(v for p in model_dir.iterdir() if p.is_dir() and (v := decimal(p.name)) is not None)

    def get(self, task: str, name: str, version: int | None = None) -> StoredModel:
        """A model's manifest (the newest version unless one is given); the file is not read."""
        versions = self.versions(task, name)
        if not versions:
            known = ", ".join(f"{t}/{n}" for t in self.tasks() for n in self.names(t)) or "nothing yet"
            raise ModelNotFound(f"no model {task}/{name} in the store {self.root} (it holds: {known})")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise ModelNotFound(f"{task}/{name} has no version {chosen} in {self.root} (versions: {versions})")
        directory = self.root / task / name / str(chosen)
        manifest = load_manifest(directory / MANIFEST_FILE)
        if (manifest.task, manifest.name, manifest.version) != (task, name, chosen):
            raise ManifestError(
                f"{directory / MANIFEST_FILE}: says {manifest.task}/{manifest.name} v{manifest.version}, "
                f"but lies in {task}/{name}/{chosen}"
            )
        return StoredModel(manifest, directory)

    def verified(self, task: str, name: str, version: int | None = None) -> StoredModel:
        """Like ``get``, and the model file's size and sha256 match its manifest."""
        stored = self.get(task, name, version)
        verify_file(stored.manifest, stored.model_path)
        return stored

    def all(self) -> Iterator[StoredModel | ManifestError]:
        """Every version of every model, or the error that stops one being read."""
        for task in self.tasks():
            for name in self.names(task):
                for version in self.versions(task, name):
                    try:
                        yield self.get(task, name, version)
                    except ManifestError as exc:
                        yield exc
