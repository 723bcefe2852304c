"""The registry in portable SQL; each backend supplies a connection, transactions and two dialect bits.

SQLite and PostgreSQL both take this SQL (``INSERT ... ON CONFLICT``, partial
unique indexes), so the logic lives once and the shared test suite checks it
on both. The partial unique index keeps "one ACTIVE version per (task, name)"
true even if two processes promote at the same moment.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, TypeVar

from cloud.registry.base import DeviceRecord, ModelEvent, ModelRecord, ModelState, Registry, RoundRecord
from cloud.registry.heartbeat import summarize

HEARTBEATS_KEPT = 1000  # per device: ~8 hours at the default 30 s heartbeat interval


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


Method = TypeVar("Method", bound=Callable[..., Any])


def reconnecting(method: Method) -> Method:
    """Run a registry call, and once more after reconnecting when the database connection was lost.

    A database restart or a dropped link is survived. Every call is one transaction, so the failed one left
    nothing behind (unless the commit itself was lost, when a repeated heartbeat is kept twice at worst).
    """

    @functools.wraps(method)
    def call(self: SqlRegistry, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if not self._lost_connection(exc):
                raise
            self._reconnect()
            return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


def schema(id_column: str) -> list[str]:
    """The tables, with the backend's auto-increment id column type."""
    return [
        """CREATE TABLE IF NOT EXISTS models (
            task TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,
            metrics TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (task, name, version))""",
        "CREATE UNIQUE INDEX IF NOT EXISTS models_one_active ON models (task, name) WHERE state = 'active'",
        f"""CREATE TABLE IF NOT EXISTS model_events (
            id {id_column}, task TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
            state TEXT NOT NULL, reason TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS model_events_by_name ON model_events (task, name, id)",
        """CREATE TABLE IF NOT EXISTS devices (
            device_id TEXT PRIMARY KEY, kind TEXT NOT NULL, grp TEXT NOT NULL, online INTEGER NOT NULL,
            models TEXT NOT NULL, offload_rate DOUBLE PRECISION, p99_ms DOUBLE PRECISION,
            last_seen DOUBLE PRECISION NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS device_events (
            id {id_column}, device_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, event TEXT NOT NULL,
            data TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS device_events_by_device ON device_events (device_id, id)",
        """CREATE TABLE IF NOT EXISTS feedback_counts (
            device_id TEXT NOT NULL, session TEXT NOT NULL, task TEXT NOT NULL, name TEXT NOT NULL,
            version INTEGER NOT NULL, n INTEGER NOT NULL, correct INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device_id, session, task, name, version))""",
        "CREATE INDEX IF NOT EXISTS feedback_counts_by_version ON feedback_counts (task, name, version)",
        """CREATE TABLE IF NOT EXISTS fl_rounds (
            run TEXT NOT NULL, task TEXT NOT NULL, round INTEGER NOT NULL, participants INTEGER NOT NULL,
            declined INTEGER NOT NULL, dropped INTEGER NOT NULL, examples INTEGER NOT NULL,
            accuracy DOUBLE PRECISION, offload_rate DOUBLE PRECISION, release TEXT, seconds DOUBLE PRECISION NOT NULL,
            at DOUBLE PRECISION NOT NULL, details TEXT NOT NULL, PRIMARY KEY (run, round))""",
    ]


class SqlRegistry(Registry):
    """Registry logic over a DB-API cursor; ``?`` placeholders are rewritten for the backend."""

    placeholder = "?"
    lock_rows = ""  # appended to a SELECT that must lock the rows it reads (PostgreSQL: FOR UPDATE)

    def __init__(self, heartbeats_kept: int = HEARTBEATS_KEPT) -> None:
        self.heartbeats_kept = heartbeats_kept
        self._lock = threading.Lock()  # one connection, shared by the caller's threads

    @abstractmethod
    def _transaction(self, write: bool) -> AbstractContextManager[Cursor]:
        """A cursor inside one transaction, committed on success and rolled back on error."""

    def _lost_connection(self, exc: Exception) -> bool:
        """Whether ``exc`` means the connection is gone (so reconnecting may help); a file never goes away."""
        return False

    def _reconnect(self) -> None:
        """Replace a lost connection; RegistryUnavailable if the database is still out of reach."""
        raise NotImplementedError

    def _run(self, cur: Cursor, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cur.execute(sql.replace("?", self.placeholder), tuple(params))
        return cur

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Cursor]:
        with self._lock, self._transaction(write) as cur:
            yield cur

    # -- models ---------------------------------------------------------------------------
    @reconnecting
    def add_model(self, task: str, name: str, version: int, state: ModelState = ModelState.STAGED,
                  metrics: dict[str, float] | None = None) -> None:
        state = ModelState(state)
        now = time.time()
        with self._tx() as cur:
            if state is ModelState.ACTIVE:
                self._lock_name(cur, task, name)
                self._retire_active(cur, task, name, version, now)
            added = self._run(cur, "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                              (task, name, version, state.value, json.dumps(metrics or {}), now))
            if _rowcount(added):
                self._event(cur, task, name, version, state, "added", now)

    @reconnecting
    def set_model_state(self, task: str, name: str, version: int, state: ModelState, reason: str = "") -> None:
        state = ModelState(state)
        now = time.time()
        with self._tx() as cur:
            self._lock_name(cur, task, name)
            row = self._run(cur, "SELECT state FROM models WHERE task = ? AND name = ? AND version = ?",
                            (task, name, version)).fetchone()
            if row is None:
                raise KeyError(_unknown(task, name, version))
            if row[0] == state.value:
                return
            if state is ModelState.ACTIVE:
                self._retire_active(cur, task, name, version, now)
            self._run(cur, "UPDATE models SET state = ?, updated_at = ? WHERE task = ? AND name = ? AND version = ?",
                      (state.value, now, task, name, version))
            self._event(cur, task, name, version, state, reason, now)

    def _lock_name(self, cur: Cursor, task: str, name: str) -> None:
        """Serialize state changes of one model name; SQLite's BEGIN IMMEDIATE already serializes all writers."""

    def _retire_active(self, cur: Cursor, task: str, name: str, version: int, now: float) -> None:
        row = self._run(cur, "SELECT version FROM models WHERE task = ? AND name = ? AND state = 'active'"
                        " AND version <> ?", (task, name, version)).fetchone()
        if row is not None:
            self._run(cur, "UPDATE models SET state = 'retired', updated_at = ? WHERE task = ? AND name = ?"
                      " AND version = ?", (now, task, name, row[0]))
            self._event(cur, task, name, row[0], ModelState.RETIRED, f"replaced by v{version}", now)

    def _event(self, cur: Cursor, task: str, name: str, version: int, state: ModelState, reason: str,
               at: float) -> None:
        self._run(cur, "INSERT INTO model_events (task, name, version, state, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
                  (task, name, version, state.value, reason, at))

    @reconnecting
    def update_model_metrics(self, task: str, name: str, version: int, metrics: dict[str, float]) -> None:
        with self._tx() as cur:
            row = self._run(cur, "SELECT metrics FROM models WHERE task = ? AND name = ? AND version = ?"
                            + self.lock_rows, (task, name, version)).fetchone()
            if row is None:
                raise KeyError(_unknown(task, name, version))
            merged = {**json.loads(row[0]), **{k: float(v) for k, v in metrics.items()}}
            self._run(cur, "UPDATE models SET metrics = ?, updated_at = ? WHERE task = ? AND name = ? AND version = ?",
                      (json.dumps(merged), time.time(), task, name, version))

    def models(self, task: str | None = None) -> list[ModelRecord]:
        where, params = ("WHERE task = ?", (task,)) if task is not None else ("", ())
        return self._model_rows(where, params)

    def active(self, task: str) -> list[ModelRecord]:
        return self._model_rows("WHERE task = ? AND state = 'active'", (task,))

    def model(self, task: str, name: str, version: int) -> ModelRecord | None:
        found = self._model_rows("WHERE task = ? AND name = ? AND version = ?", (task, name, version))
        return found[0] if found else None

    @reconnecting
    def _model_rows(self, where: str, params: Sequence[Any]) -> list[ModelRecord]:
        with self._tx(write=False) as cur:
            rows = self._run(cur, f"SELECT task, name, version, state, metrics, updated_at FROM models {where}"
                             " ORDER BY task, name, version", params).fetchall()
        return [ModelRecord(t, n, v, ModelState(s), json.loads(m), u) for t, n, v, s, m, u in rows]

    @reconnecting
    def model_history(self, task: str, name: str) -> list[ModelEvent]:
        with self._tx(write=False) as cur:
            rows = self._run(cur, "SELECT task, name, version, state, reason, at FROM model_events"
                             " WHERE task = ? AND name = ? ORDER BY id", (task, name)).fetchall()
        return [ModelEvent(t, n, v, ModelState(s), r, a) for t, n, v, s, r, a in rows]

    # -- devices --------------------------------------------------------------------------
    @reconnecting
    def record_heartbeat(self, device_id: str, heartbeat: dict[str, Any], received_at: float) -> None:
        s = summarize(heartbeat)
        with self._tx() as cur:
            self._run(cur, """INSERT INTO devices VALUES (?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET
                kind = excluded.kind, grp = excluded.grp, online = 1, models = excluded.models,
                offload_rate = excluded.offload_rate, p99_ms = excluded.p99_ms, last_seen = excluded.last_seen""",
                      (device_id, s.kind, s.group, json.dumps(s.models), s.offload_rate, s.p99_ms, received_at))
            self._device_event(cur, device_id, received_at, "heartbeat", heartbeat)
            self._run(cur, """DELETE FROM device_events WHERE device_id = ? AND event = 'heartbeat' AND id <= (
                SELECT id FROM device_events WHERE device_id = ? AND event = 'heartbeat'
                ORDER BY id DESC LIMIT 1 OFFSET ?)""", (device_id, device_id, self.heartbeats_kept))

    @reconnecting
    def record_presence(self, device_id: str, online: bool, at: float) -> None:
        with self._tx() as cur:
            row = self._run(cur, "SELECT online FROM devices WHERE device_id = ?" + self.lock_rows,
                            (device_id,)).fetchone()
            if row is None:
                self._run(cur, "INSERT INTO devices VALUES (?, 'unknown', 'unknown', ?, '{}', NULL, NULL, ?)"
                          " ON CONFLICT DO NOTHING", (device_id, int(online), at))
            elif bool(row[0]) == online:
                return
            else:  # last_seen moves on what the device says, not on the broker's Last Will
                self._run(cur, "UPDATE devices SET online = ?, last_seen = CASE WHEN ? = 1 AND ? > last_seen"
                          " THEN ? ELSE last_seen END WHERE device_id = ?",
                          (int(online), int(online), at, at, device_id))
            self._device_event(cur, device_id, at, "online" if online else "offline", {})

    @reconnecting
    def record_feedback(self, device_id: str, session: str, counts: dict[tuple[str, str, int], tuple[int, int]]
                        ) -> dict[tuple[str, str, int], tuple[int, int]]:
        now, changed = time.time(), []
        with self._tx() as cur:
            for (task, name, version), (n, correct) in counts.items():
                kept = self._run(cur, """INSERT INTO feedback_counts VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (device_id, session, task, name, version) DO UPDATE SET
                    n = excluded.n, correct = excluded.correct, at = excluded.at WHERE excluded.n > feedback_counts.n""",
                                 (device_id, session, task, name, version, n, correct, now))
                if _rowcount(kept):
                    changed.append((task, name, version))
            totals: dict[tuple[str, str, int], tuple[int, int]] = {}
            for key in changed:
                row = self._run(cur, "SELECT SUM(n), SUM(correct) FROM feedback_counts"
                                " WHERE task = ? AND name = ? AND version = ?", key).fetchone()
                totals[key] = (int(row[0]), int(row[1]))
        return totals

    def _device_event(self, cur: Cursor, device_id: str, at: float, event: str, data: dict[str, Any]) -> None:
        self._run(cur, "INSERT INTO device_events (device_id, at, event, data) VALUES (?, ?, ?, ?)",
                  (device_id, at, event, json.dumps(data)))

    @reconnecting
    def devices(self) -> list[DeviceRecord]:
        with self._tx(write=False) as cur:
            rows = self._run(cur, "SELECT device_id, kind, online, models, offload_rate, p99_ms, last_seen, grp"
                             " FROM devices ORDER BY device_id").fetchall()
        return [DeviceRecord(d, k, bool(o), json.loads(m), r, p, s, g) for d, k, o, m, r, p, s, g in rows]

    @reconnecting
    def device_history(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self._tx(write=False) as cur:
            rows = self._run(cur, "SELECT at, event, data FROM device_events WHERE device_id = ?"
                             " ORDER BY id DESC LIMIT ?", (device_id, limit)).fetchall()
        return [{"at": at, "event": event, "data": json.loads(data)} for at, event, data in rows]


    # -- federated rounds -------------------------------------------------------------------
    @reconnecting
    def record_round(self, record: RoundRecord) -> None:
        r = record
        with self._tx() as cur:
            self._run(cur, """INSERT INTO fl_rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (run, round) DO UPDATE SET task = excluded.task, participants = excluded.participants,
                declined = excluded.declined, dropped = excluded.dropped, examples = excluded.examples,
                accuracy = excluded.accuracy, offload_rate = excluded.offload_rate, release = excluded.release,
                seconds = excluded.seconds, at = excluded.at, details = excluded.details""",
                      (r.run, r.task, r.round, r.participants, r.declined, r.dropped, r.examples, r.accuracy,
                       r.offload_rate, r.release, r.seconds, r.at, json.dumps(r.details)))

    @reconnecting
    def rounds(self, run: str | None = None) -> list[RoundRecord]:
        where, params = ("WHERE run = ?", (run,)) if run is not None else ("", ())
        with self._tx(write=False) as cur:
            rows = self._run(cur, "SELECT run, task, round, participants, declined, dropped, examples, accuracy,"
                             f" offload_rate, release, seconds, at, details FROM fl_rounds {where}"
                             " ORDER BY at, run, round", params).fetchall()
        return [RoundRecord(run, task, number, participants, declined, dropped, examples, accuracy, offload, release,
                            seconds, at, json.loads(details))
                for run, task, number, participants, declined, dropped, examples, accuracy, offload, release, seconds, at,
                details in rows]


def _rowcount(cur: Cursor) -> int:
    return int(getattr(cur, "rowcount", 0))


def _unknown(task: str, name: str, version: int) -> str:
    return f"{task}/{name} v{version} is not in the registry (add it first)"
