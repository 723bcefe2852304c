"""The release manifest of a model: what the file is, where it came from, how well it does.

Models are data, not code: an ONNX file plus this manifest. The agent reads it
(so it lives here, with no torch), checks the file's sha256 before loading, and
refuses versions that do not move forward. ``signature`` is added by signing
and is not part of the signed content.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.config.validation_errors import describe

MANIFEST_FILE = "manifest.json"
#: Task, model name and file name become path segments in the store: one plain segment each, so a
#: signed manifest can never name a path outside its version directory ("..", "/", absolute paths).
PATH_SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


MAX_LABEL = 200  # characters of one class label
OutputKind = Literal["logits", "probabilities", "other"]
ADDED_LATER = ("output_kind", "labels")  # fields a manifest signed before they existed does not have


class ManifestError(Exception):
    """A manifest or model file that cannot be trusted; the message names the file."""


class TensorSpec(BaseModel):
    """One model input or output: name, element type and shape (None = any size, e.g. batch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    dtype: str = Field(description="numpy dtype name, e.g. float32")
    shape: list[int | None]


class Manifest(BaseModel):
    """Everything an agent needs to know about one model version before it runs it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    task: str = Field(pattern=PATH_SEGMENT)
    name: str = Field(pattern=PATH_SEGMENT, description="Model name within the task, e.g. cloud, edge, edge-int8")
    version: int = Field(ge=1, description="Increases with every release of (task, name)")
    parent_version: int | None = Field(None, description="Version of the model this one was derived from")
    parent_name: str | None = Field(None, pattern=PATH_SEGMENT, description="Name of the model this one was derived from")
    file: str = Field("model.onnx", pattern=PATH_SEGMENT, description="The model file's name in its version directory")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: dict[str, float] = Field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    temperature: float = Field(1.0, gt=0, description="Calibration temperature: softmax(logits / T)")
    output_kind: OutputKind | None = Field(
        None, description="What the first output holds: logits (softmax(logits / T) gives the answer),"
        " probabilities (already a distribution: used as is) or other (no class scores: boxes, embeddings;"
        " no confidence offload). None: logits, as every manifest before this field.")
    labels: list[str] | None = Field(
        None, description="Class names, one per class score of the first output, in order: answers name their"
        " top class with them. None: the model's classes have no names (answers carry indices only).")
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    signature: str | None = Field(None, description="Ed25519 signature over signed_bytes(), base64")

    @field_validator("file")
    @classmethod
    def check_file(cls, value: str) -> str:
        """The model file may not replace the manifest that vouches for it."""
        if value == MANIFEST_FILE:
            raise ValueError(f"the model file may not be called {MANIFEST_FILE}")
        return value

    @field_validator("labels")
    @classmethod
    def check_labels(cls, value: list[str] | None) -> list[str] | None:
        """One line of text per class: a label is shown in answers and logs, so it may be neither empty nor several lines."""
        for i, label in enumerate(value or []):
            if not label.strip() or "\n" in label or "\r" in label or len(label) > MAX_LABEL:
                raise ValueError(f"label {i + 1} ({label[:40]!r}) must be one line of 1 to {MAX_LABEL} characters")
        return value

    @model_validator(mode="after")
    def check_label_count(self) -> Manifest:
        """As many labels as the first output has class scores, where the graph fixes that number."""
        classes = self.outputs[0].shape[-1] if self.labels is not None and self.outputs and self.outputs[0].shape else None
        if classes is not None and self.labels is not None and len(self.labels) != classes:
            raise ValueError(f"{len(self.labels)} labels for {classes} classes of output {self.outputs[0].name!r}")
        return self

    @property
    def precision(self) -> str | None:
        """fp32, fp16 or int8, as fedge made it; None when the recipe does not tell (a user's own file).

        A zoo release (recipe ``trained``) is a plain fp32 export; a compress release names its quantization.
        """
        recipe = self.recipe or {}
        if "quantization" not in recipe:
            return "fp32" if "trained" in recipe else None
        quantization = str(recipe["quantization"])
        if quantization.startswith(("static", "dynamic")):  # fedge-cloud compress's int8 variants
            return "int8"
        return quantization if quantization in ("fp32", "fp16") else None

    @property
    def kind(self) -> OutputKind:
        return self.output_kind or "logits"

    def signed_bytes(self) -> bytes:
        """The canonical bytes a signature covers: every field but the signature.

        Fields added later count only when set, so a manifest signed before they existed still verifies.
        """
        return unsigned_bytes(self, unset_later=ADDED_LATER)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=False) + "\n"


def unsigned_bytes(document: BaseModel, unset_later: tuple[str, ...] = ()) -> bytes:
    """A signed document's canonical bytes: every field but ``signature``, as sorted compact JSON.

    ``unset_later``: fields left out while None (added after documents were signed without them).
    """
    doc = document.model_dump(mode="json", exclude={"signature", *(f for f in unset_later
                                                                     if getattr(document, f) is None)})
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; any problem is a ManifestError naming the file."""
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except ValidationError as exc:
        raise ManifestError(f"{path}: invalid manifest: {describe(exc)}") from None


def file_in(directory: Path, name: str) -> Path:
    """``directory / name``, refused (ManifestError) if it resolves outside ``directory``."""
    path = directory / name
    if path.resolve().parent != directory.resolve():
        raise ManifestError(f"{name!r} is not a plain file name inside {directory}")
    return path


def verify_file(manifest: Manifest, path: Path) -> None:
    """Check the model file against the manifest's size and sha256."""
    if not path.is_file():
        raise ManifestError(f"{path}: model file is missing")
    size = path.stat().st_size
    if size != manifest.size_bytes:
        raise ManifestError(f"{path}: {size} bytes, manifest says {manifest.size_bytes} (truncated or replaced?)")
    actual = sha256_file(path)
    if actual != manifest.sha256:
        raise ManifestError(f"{path}: sha256 {actual[:12]}… does not match the manifest's {manifest.sha256[:12]}…")
