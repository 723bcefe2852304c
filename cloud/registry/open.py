"""Pick the registry backend from a URL: SQLite by default, PostgreSQL when a fleet outgrows one box."""

from __future__ import annotations

import os
from pathlib import Path

from cloud.registry.base import Registry
from cloud.registry.sqlite import SqliteRegistry

DEFAULT_REGISTRY = Path("var/registry.db")
_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://")


def default_registry() -> str:
    """``$FEDGE_REGISTRY`` or ``./var/registry.db``."""
    return os.environ.get("FEDGE_REGISTRY") or str(DEFAULT_REGISTRY)


def sqlite_path(url: str | Path) -> Path | None:
    """The file a SQLite registry URL or path names; None for a PostgreSQL URL.

    ``sqlite:///var/r.db`` is relative, ``sqlite:////srv/r.db`` absolute (as SQLAlchemy spells them).
    """
    text = str(url)
    if text.startswith(_POSTGRES):
        return None
    if text.startswith(_SQLITE):
        return Path(text[len(_SQLITE):])
    if "://" in text:
        raise ValueError(f"registry URL {text!r}: use a file path, sqlite:///path or postgresql://user@host/db")
    return Path(text)


def open_registry(url: str | Path | None = None) -> Registry:
    """Open (creating tables if needed) the registry at ``url``; None means :func:`default_registry`.

    Raises ValueError for an unknown URL scheme and RegistryUnavailable when the database cannot be opened.
    """
    url = default_registry() if url is None else url
    path = sqlite_path(url)
    if path is not None:
        return SqliteRegistry(path)
    from cloud.registry.postgres import PostgresRegistry  # psycopg: loaded only by deployments that use it

    return PostgresRegistry(str(url))


def existing_registry(url: str | Path | None = None) -> Registry | None:
    """Like :func:`open_registry`, but None when it is a SQLite file nobody has created yet.

    Read-only commands use this, so looking does not leave an empty registry behind.
    """
    path = sqlite_path(default_registry() if url is None else url)
    if path is not None and path.is_dir():
        raise ValueError(f"registry {path} is a directory: name the database file, e.g. {path / 'registry.db'}")
    return None if path is not None and not path.is_file() else open_registry(url)
