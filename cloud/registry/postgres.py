"""The registry in PostgreSQL, for fleets whose coordinators run on more than one machine.

Each method is one transaction; a state change takes an advisory lock on its
model name, so two coordinators promoting at once serialize.
Table creation takes an advisory lock, so coordinators starting together do
not race on CREATE TABLE.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise RegistryUnavailable(f"cannot connect to the PostgreSQL registry: {exc}".strip()) from None
        try:
            with self._transaction(write=True) as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                if schema_name is not None:
                    name = sql.Identifier(schema_name)
                    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
                    cur.execute(sql.SQL("SET search_path TO {}").format(name))  # for the session, not just this tx
                for statement in schema("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"):
                    cur.execute(statement)
        except psycopg.Error as exc:
            self._db.close()
            raise RegistryUnavailable(f"cannot create the registry tables in PostgreSQL: {exc}") from None

    def _lock_name(self, cur: Cursor, task: str, name: str) -> None:
        """A lock per model name held to the end of the transaction, even for a name with no rows yet."""
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"fedge-model:{task}/{name}",))

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Cursor]:
        with self._db.transaction(), self._db.cursor() as cur:
            yield cur

    def close(self) -> None:
        self._db.close()
