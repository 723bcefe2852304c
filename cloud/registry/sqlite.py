"""The embedded registry: one SQLite file, shared safely by the coordinator and the CLI.

WAL lets readers (``fedge-cloud devices``) run while the coordinator writes;
writers take the lock up front (BEGIN IMMEDIATE) and wait up to the busy
timeout for each other instead of failing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloud.registry.base import RegistryUnavailable
from cloud.registry.sql import HEARTBEATS_KEPT, Cursor, SqlRegistry, schema

BUSY_TIMEOUT_S = 30.0


class SqliteRegistry(SqlRegistry):
    """The registry in a SQLite file (created with its tables on first open)."""

    def __init__(self, path: Path, heartbeats_kept: int = HEARTBEATS_KEPT) -> None:
        super().__init__(heartbeats_kept)
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint, safe against corruption
            with self._transaction(write=True) as cur:
                for statement in schema("INTEGER PRIMARY KEY AUTOINCREMENT"):
                    cur.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise RegistryUnavailable(f"cannot open the SQLite registry {self.path}: {exc}") from None

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Cursor]:
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cur
        except BaseException:
            self._db.rollback()
            raise
        self._db.commit()

    def close(self) -> None:
        self._db.close()
