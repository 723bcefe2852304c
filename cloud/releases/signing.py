"""Signing what agents install: a document's signed bytes, and a stored version's manifest in place."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from agent.durable import replace_file
from agent.manifest import MANIFEST_FILE
from agent.model_store import ModelStore, StoredModel
from agent.signing import Signed
from cloud.releases.keys import load_private_key

D = TypeVar("D", bound=BaseModel)


def sign(document: D, key: Ed25519PrivateKey) -> D:
    """A copy of ``document`` carrying ``key``'s signature over its signed bytes."""
    signed: Signed = document  # type: ignore[assignment]
    signature = base64.b64encode(key.sign(signed.signed_bytes())).decode()
    return document.model_copy(update={"signature": signature})


def sign_stored(store: ModelStore, task: str, name: str, version: int | None,
                key: Ed25519PrivateKey | Path) -> StoredModel:
    """Sign a stored version's manifest in place with ``key`` (or the key in that file).

    The signed manifest is written whole to a temp file, fsynced and renamed over the old one,
    so a crash leaves the old manifest or the new one, never a torn one.
    """
    stored = store.verified(task, name, version)
    signed = sign(stored.manifest, key if isinstance(key, Ed25519PrivateKey) else load_private_key(key))
    target = stored.directory / MANIFEST_FILE
    replace_file(target, signed.to_json().encode())
    return StoredModel(signed, stored.directory)
