"""Mosquitto 2.x password files: what ``fedge-cloud acl`` writes for a fleet and the private test broker uses."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from pathlib import Path

_PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.x writes


def password_hash(password: str, salt: bytes | None = None) -> str:
    """A Mosquitto 2.x password-file hash: ``$7$`` PBKDF2-SHA512."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS, 64)
    return f"$7${_PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write ``user:hash`` lines readable only by the owner."""
    for name in users:
        if not name or ":" in name or "\n" in name:
            raise ValueError(f"user name {name!r} must be non-empty and hold no ':' or newline")
    path.write_text("".join(f"{name}:{password_hash(pw)}\n" for name, pw in users.items()))
    path.chmod(0o600)
