"""The release signing key: made once with ``fedge-cloud keys init``, used to sign manifests and rollouts.

The private key never leaves the coordinator (file mode 0600); agents get the
public key through their profile (``updates.public_key_file``).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from pydantic import BaseModel

from agent.command_line import os_error_reason, print_help_of
from agent.durable import sync_directory, write_temp
from agent.exit_codes import ExitCode
from agent.signing import KeyFileError, Signed

PRIVATE_FILE, PUBLIC_FILE = "release.key", "release.pub"
DEFAULT_KEY_DIR = Path("keys")
D = TypeVar("D", bound=BaseModel)


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


def sign(document: D, key: Ed25519PrivateKey) -> D:
    """A copy of ``document`` carrying ``key``'s signature over its signed bytes."""
    signed: Signed = document  # type: ignore[assignment]
    signature = base64.b64encode(key.sign(signed.signed_bytes())).decode()
    return document.model_copy(update={"signature": signature})


def add_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `keys` (with `init`)."""
    parser = commands.add_parser("keys", help="the Ed25519 key that signs model releases",
                                 description="Manage the release signing key.")
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    init = actions.add_parser(
        "init", help="create the release signing key pair",
        description=f"Write {PRIVATE_FILE} (Ed25519, mode 0600, keep it on the coordinator only) and"
        f" {PUBLIC_FILE} (copy it to every device; profiles name it in updates.public_key_file)."
        " An existing pair is never overwritten without --force.",
    )
    init.add_argument("--dir", type=Path, default=None, help="key directory (default: $FEDGE_KEYS or ./keys)")
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    init.set_defaults(run=run_keys_init)
    parser.set_defaults(run=print_help_of(parser))


def run_keys_init(args: argparse.Namespace) -> int:
    try:
        private, public = init_keys(args.dir or default_key_dir(), force=args.force)
    except FileExistsError as exc:
        print(f"fedge-cloud keys init: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except OSError as exc:  # a directory that cannot be made or written: the user's to fix, like any bad path
        print(f"fedge-cloud keys init: cannot write the key pair: {os_error_reason(exc)}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    print(f"private key {private} (keep it secret), public key {public} (copy it to every device)")
    return ExitCode.OK
