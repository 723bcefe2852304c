"""SuperNode keys for Flower's node authentication: ECDSA P-384 in OpenSSH format, as Flower reads them.

The private key goes to the device (``federated.auth_key_file``, mode 0600); the public key is
registered with the SuperLink (``fedge-cloud fl serve --node-keys``). Flower refuses Ed25519 here.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from agent.durable import sync_directory, write_temp
from agent.protocol.topics import check_segment


def write_node_key(directory: Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """``<name>.key`` (0600) and ``<name>.pub`` in ``directory``; an existing pair is kept unless ``force``."""
    check_segment(name, "node name")
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    if not force and (private.exists() or public.exists()):
        raise FileExistsError(f"{private} or {public} exists: the SuperLink may know that key; use --force to replace")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    for path, data, mode in (
        (private, key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()), 0o600),
        (public, key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH) + f" {name}\n".encode(), 0o644),
    ):
        temp = write_temp(path, data, mode)
        os.replace(temp, path)
    sync_directory(directory)
    return private, public
