"""The registry in PostgreSQL, for fleets whose coordinators run on more than one machine.

Each method is one transaction; a state change takes an advisory lock on its
model name, so two coordinators promoting at once serialize.
Table creation takes an advisory lock, so coordinators starting together do
not race on CREATE TABLE. A call that finds the connection lost (the database
restarted) reconnects once and runs again, so a long-running coordinator
outlives database restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from cloud.registry.base import RegistryUnavailable
from cloud.registry.sql import HEARTBEATS_KEPT, Cursor, SqlRegistry, schema

_SCHEMA_LOCK = 0x66656467  # pg_advisory_xact_lock key for creating the tables ("fedg")


class PostgresRegistry(SqlRegistry):
    """The registry in a PostgreSQL database; ``schema`` (created if missing) keeps its tables apart."""

    placeholder = "%s"
    lock_rows = " FOR UPDATE"

    def __init__(self, url: str, schema_name: str | None = None, heartbeats_kept: int = HEARTBEATS_KEPT) -> None:
        super().__init__(heartbeats_kept)
        self.url = url
        self.schema_name = schema_name
        self._db = self._connect()
        try:
            with self._transaction(write=True) as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                if schema_name is not None:
                    create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema_name))
                    cur.execute(create.as_string(self._db))
                    self._use_schema(self._db)
                for statement in schema("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"):
                    cur.execute(statement)
        except psycopg.Error as exc:
            self._db.close()
            raise RegistryUnavailable(f"cannot create the registry tables in PostgreSQL: {exc}") from None

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            db = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise RegistryUnavailable(f"cannot connect to the PostgreSQL registry: {exc}".strip()) from None
        return db

    def _use_schema(self, db: psycopg.Connection[Any]) -> None:
        """Point the session (not just one transaction) at our schema."""
        if self.schema_name is not None:
            db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema_name)))

    def _lost_connection(self, exc: Exception) -> bool:
        return isinstance(exc, psycopg.OperationalError) and (self._db.closed or self._db.broken)

    def _reconnect(self) -> None:
        with self._lock:
            self._db.close()
            db = self._connect()
            try:
                self._use_schema(db)
            except psycopg.Error as exc:
                db.close()
                raise RegistryUnavailable(f"cannot use the registry schema after reconnecting: {exc}") from None
            self._db = db

    def _lock_name(self, cur: Cursor, task: str, name: str) -> None:
        """A lock per model name held to the end of the transaction, even for a name with no rows yet."""
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"fedge-model:{task}/{name}",))

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Cursor]:
        with self._db.transaction(), self._db.cursor() as cur:
            yield cur

    def close(self) -> None:
        self._db.close()
