"""The release signing key: made once with ``fedge-cloud keys init``, used to sign manifests and releases.

The private key never leaves the coordinator (file mode 0600); agents get the
public key through their profile (``updates.public_key_file``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from agent.durable import sync_directory, write_temp
from agent.signing import KeyFileError

PRIVATE_FILE, PUBLIC_FILE = "release.key", "release.pub"
DEFAULT_KEY_DIR = Path("keys")


def default_key_dir() -> Path:
    """``$FEDGE_KEYS`` or ``./keys``."""
    return Path(os.environ.get("FEDGE_KEYS", DEFAULT_KEY_DIR))


def init_keys(directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new key pair into ``directory``; an existing pair is kept unless ``force``.

    Each file is written whole to a new temp file (created exclusively, 0600),
    fsynced and renamed into place, so no reader sees half a key and an old file's looser mode never
    applies to the new key. Two renames cannot be one atomic step, so the order
    makes every crash point safe: the private key is the source of truth (the
    public one derives from it), so the old public key is removed first and the
    new one renamed in last. A crash can leave the pair without its public key
    (run ``keys init --force`` again), never a public key that does not match.
    """
    private, public = directory / PRIVATE_FILE, directory / PUBLIC_FILE
    if not force and (private.exists() or public.exists()):
        raise FileExistsError(f"{private} or {public} exists: every agent trusts the old public key,"
                              " so a new pair needs --force and the new release.pub on every device")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    temps: list[Path] = []
    try:
        temps.append(write_temp(private, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), 0o600))
        temps.append(write_temp(public, key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
                                 0o644))
        public.unlink(missing_ok=True)
        sync_directory(directory)
        os.replace(temps[0], private)
        sync_directory(directory)
        os.replace(temps[1], public)
        sync_directory(directory)
    finally:
        for temp in temps:  # renamed ones are gone already
            temp.unlink(missing_ok=True)
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``; KeyFileError naming the file otherwise."""
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: private key not found; create one with: fedge-cloud keys init") from None
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, but releases are signed with Ed25519")
    return key
