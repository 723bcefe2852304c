"""Ed25519 verification of signed documents (model manifests, release commands), with no torch.

The cloud signs the canonical bytes of a document (every field but its
``signature``); the agent holds only the public key, so a device that is broken
into cannot sign anything. Signing lives in ``cloud.releases.keys``.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from agent.manifest import ManifestError


class SignatureError(ManifestError):
    """A document that is unsigned, signed by another key, or altered after signing."""


class KeyFileError(ValueError):
    """A key file that cannot be read or is not an Ed25519 key; the message names the file."""


class Signed(Protocol):
    """A document with a detached signature over ``signed_bytes()``."""

    @property
    def signature(self) -> str | None: ...  # read-only: the signed documents are frozen models

    def signed_bytes(self) -> bytes: ...


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (as ``fedge-cloud keys init`` writes it)."""
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise KeyFileError(f"{path}: public key file not found (copy the cloud's release.pub here)") from None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, but releases are signed with Ed25519")
    return key


def verify(document: Signed, key: Ed25519PublicKey, what: str) -> None:
    """Raise SignatureError unless ``document.signature`` is ``key``'s signature over its signed bytes."""
    if not document.signature:
        raise SignatureError(f"{what} is not signed; the agent only installs signed releases")
    try:
        signature = base64.b64decode(document.signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what}: the signature is not valid base64") from None
    try:
        key.verify(signature, document.signed_bytes())
    except InvalidSignature:
        raise SignatureError(
            f"{what}: bad signature (signed with another key, or changed after signing)"
        ) from None
