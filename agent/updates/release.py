"""The release command the cloud publishes (retained) for a task and device group, and its checks.

A release wraps a signed model manifest with what to do (``install`` or
``rollback``), whom it is for (a group, or a canary list of devices in it) and
where the model bytes are. The release is signed as a whole, so neither the
action nor the targets can be changed on the way; the manifest keeps its own
signature from ``fedge-cloud models publish``. The model bytes are retained on
``Topics.artifact(...)``, derived from the manifest by both sides. ``issued_at`` orders releases,
so an old one replayed is recognised and ignored.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config.validation_errors import describe
from agent.manifest import Manifest, ManifestError, unsigned_bytes
from agent.signing import verify

Action = Literal["install", "rollback"]


class ReleaseError(ManifestError):
    """A release message that cannot be used: unreadable, unsigned, badly signed or not applicable."""


class Release(BaseModel):
    """One signed instruction: run this model version (``install`` forward, ``rollback`` back)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    action: Action
    group: str = Field(description="Device group the release is for (the profile's updates.group)")
    devices: list[str] | None = Field(None, description="Canary: only these devices of the group; None: all")
    manifest: Manifest
    issued_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    signature: str | None = Field(None, description="Ed25519 signature over signed_bytes(), base64")

    def signed_bytes(self) -> bytes:
        """The canonical bytes a signature covers: every field but the release's own signature."""
        return unsigned_bytes(self)

    def targets(self, device_id: str, group: str) -> bool:
        return self.group == group and (self.devices is None or device_id in self.devices)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def parse_release(payload: bytes, topic: str) -> Release:
    """A release from a message payload; ReleaseError naming the topic otherwise."""
    try:
        return Release.model_validate_json(payload)
    except ValidationError as exc:
        raise ReleaseError(f"release on {topic}: invalid: {describe(exc)}") from None


def check_release_signature(release: Release, key: Ed25519PublicKey) -> None:
    """The release itself (action, targets, time) comes from the key's holder; until then it decides nothing."""
    m = release.manifest
    verify(release, key, f"release of {m.task}/{m.name} v{m.version}")


def check_manifest_signature(release: Release, key: Ed25519PublicKey) -> None:
    """The model the (verified) release names was signed when it was published."""
    m = release.manifest
    verify(m, key, f"manifest of {m.task}/{m.name} v{m.version}")
