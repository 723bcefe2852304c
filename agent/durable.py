"""Files that are there whole or not at all, after a crash or a kill -9.

Model updates, update records, release keys and signed manifests are all
written the same way: a new file beside the target (created exclusively, with
its final mode from the start), fsynced, renamed over the target, and the
directory fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_temp(target: Path, data: bytes, mode: int = 0o644) -> Path:
    """``data`` in a new fsynced file beside ``target``, ready to rename over it.

    mkstemp creates the file exclusively and 0600, so a secret is never readable on the way.
    """
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def replace_file(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Put ``data`` at ``target`` in one rename, durably."""
    os.replace(write_temp(target, data, mode), target)
    sync_directory(target.parent)


def sync_directory(directory: Path) -> None:
    """Make renames, creations and removals in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
