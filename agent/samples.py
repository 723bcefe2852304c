"""The sample store: what the agent keeps for federated fine-tuning.

Offloaded inputs with the cloud's probabilities (soft labels), audited inputs
(a small random share of confident local answers the cloud labelled too, so
training does not see the hard cases only), and labels users send back as
feedback. SQLite in WAL mode with synchronous=NORMAL survives the
agent being killed (every committed row is there after a restart); bounded by
rows and bytes, oldest first out, and by age. ``enabled=False`` keeps nothing,
for deployments where inputs must not be stored.

One connection behind a lock: SQLite serialises writers anyway, and the
agent's writes are small and few next to its inferences. The federated client
opens the same file read-only (``SampleStore.reader``) while the agent runs.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    created REAL NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    x BLOB NOT NULL,
    soft BLOB,
    label INTEGER,
    nbytes INTEGER NOT NULL,
    origin TEXT NOT NULL DEFAULT 'offload'
);
CREATE INDEX IF NOT EXISTS samples_task ON samples(task);
"""
#: Why a sample was kept: the cloud answered an offloaded request, or audited a confident local answer.
ORIGINS = ("offload", "audit")


def _dims(shape: str) -> list[int]:
    return [int(d) for d in shape.split(",") if d]


def _rows(shape: str) -> int:
    """Rows of a stored input: its first (batch) axis, or one for a single sample without a batch axis."""
    dims = _dims(shape)
    return dims[0] if len(dims) > 1 else 1


def _check_label(request_id: str, label: int, rows: int, soft_bytes: int | None) -> None:
    """ValueError unless ``label`` names a class of a one-row sample (any class when there are no soft labels)."""
    if rows != 1:
        raise ValueError(f"request {request_id!r} asked about {rows} rows; one label cannot name the class of each")
    classes = soft_bytes // 4 if soft_bytes else None  # float32 probabilities of the one row
    if label < 0 or (classes is not None and label >= classes):
        known = "classes count from 0" if classes is None else f"0 to {classes - 1}"
        raise ValueError(f"label {label} is not a class of request {request_id!r} ({known})")


@dataclass(frozen=True)
class TrainingSet:
    """Stored samples of one task, a row per input row: inputs, soft labels (NaN where none), labels (-1 where none)."""

    x: np.ndarray
    soft: np.ndarray
    labels: np.ndarray


class SampleStore:
    """Bounded, crash-safe storage of training samples."""

    def __init__(self, path: Path, *, enabled: bool = True, max_rows: int = 50_000, max_bytes: int = 256 << 20,
                 retention_days: float = 30.0) -> None:
        self.enabled = enabled
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self.retention_s = retention_days * 86400
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(samples)")}
            if "origin" not in columns:  # a store written before audits existed: every sample was offloaded
                self._db.execute("ALTER TABLE samples ADD COLUMN origin TEXT NOT NULL DEFAULT 'offload'")
            self._expire()

    @classmethod
    def reader(cls, path: Path) -> SampleStore:
        """The store at ``path``, read-only, beside the agent that writes it; FileNotFoundError if there is none.

        SQLite's WAL mode lets this reader see every committed sample while the agent goes on writing;
        the reader never writes, evicts or expires anything (``add`` and ``feedback`` fail).
        """
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no sample store (has this device kept any samples yet?)")
        store = cls(path, enabled=False)
        store._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                    isolation_level=None)
        return store

    def add(self, request_id: str, task: str, x: np.ndarray, soft: np.ndarray | None = None,
            origin: str = "offload") -> None:
        """Keep one sample (a no-op when disabled), evicting the oldest past the bounds."""
        if self._db is None:
            return
        if origin not in ORIGINS:
            raise ValueError(f"origin {origin!r} is not one of {', '.join(ORIGINS)}")
        x = np.ascontiguousarray(x)
        soft_blob = None if soft is None else np.ascontiguousarray(soft, dtype=np.float32).tobytes()
        nbytes = x.nbytes + (len(soft_blob) if soft_blob else 0)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO samples (request_id, task, created, dtype, shape, x, soft, nbytes, origin)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, task, time.time(), x.dtype.str, ",".join(map(str, x.shape)), x.tobytes(), soft_blob, nbytes,
                 origin),
            )
            self._evict()

    def feedback(self, request_id: str, label: int, task: str | None = None) -> bool:
        """Attach a user's label to a kept sample (of ``task``, when given).

        False when there is none: evicted, never kept, disabled, or another task's. ValueError, and nothing
        stored, when the label is no class of the sample's soft labels (the cloud's probabilities give the
        number of classes), or the sample holds several rows (one label cannot name the class of each):
        checked on every call, so a label refused while the answer was recent is refused later too.
        """
        if self._db is None:
            return False
        with self._lock:
            row = self._db.execute("SELECT task, shape, length(soft) FROM samples WHERE request_id = ?",
                                   (request_id,)).fetchone()
            if row is None or (task is not None and row[0] != task):
                return False
            _check_label(request_id, label, _rows(row[1]), row[2])
            self._db.execute("UPDATE samples SET label = ? WHERE request_id = ?", (label, request_id))
        return True

    def count(self, task: str | None = None, origin: str | None = None) -> int:
        """Samples kept (of ``task``, of ``origin``, when given)."""
        if self._db is None:
            return 0
        where = " AND ".join(clause for clause, value in (("task = ?", task), ("origin = ?", origin)) if value)
        with self._lock:
            row = self._db.execute(f"SELECT COUNT(*) FROM samples{' WHERE ' + where if where else ''}",
                                   tuple(value for value in (task, origin) if value)).fetchone()
            return int(row[0])

    def training_set(self, task: str, *, newest: int | None = None, labelled: bool = False) -> TrainingSet:
        """Kept samples of ``task`` as arrays, oldest first (rows of one sample each).

        ``newest``: only the most recent that many; ``labelled``: only samples with a user label
        or the cloud's probabilities. Both are applied in the query, so a caller wanting the last
        few hundred does not decode the whole store.
        """
        if self._db is None:
            raise RuntimeError("the sample store is disabled in this profile")
        where = "task = ?" + (" AND (label IS NOT NULL OR length(soft) > 0)" if labelled else "")
        with self._lock:
            rows = self._db.execute(
                f"SELECT dtype, shape, x, soft, label FROM samples WHERE {where} ORDER BY seq DESC LIMIT ?",
                (task, -1 if newest is None else newest),  # SQLite: a negative LIMIT means none
            ).fetchall()
        rows.reverse()
        xs, softs, labels = [], [], []
        for dtype, shape, x, soft, label in rows:
            array = np.frombuffer(x, dtype=np.dtype(dtype)).reshape(_dims(shape))
            batch = array if array.ndim > 1 else array[None]  # a batch request's sample is several rows
            xs.append(batch)
            softs.append(np.frombuffer(soft, dtype=np.float32).reshape(len(batch), -1) if soft else None)
            labels += [-1 if label is None else int(label)] * len(batch)
        classes = next((s.shape[1] for s in softs if s is not None), 0)
        soft_array = np.concatenate([
            s if s is not None else np.full((len(b), classes), np.nan, np.float32) for s, b in zip(softs, xs, strict=True)
        ]) if softs else np.empty((0, classes), np.float32)
        return TrainingSet(np.concatenate(xs) if xs else np.empty((0,)), soft_array, np.array(labels, dtype=np.int64))

    def close(self) -> None:
        if self._db is not None:
            with self._lock:
                self._db.close()
                self._db = None

    def _evict(self) -> None:
        assert self._db is not None
        rows, total = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM samples").fetchone()
        while rows > self.max_rows or total > self.max_bytes:
            excess_rows = max(rows - self.max_rows, 1)
            oldest = self._db.execute("SELECT seq, nbytes FROM samples ORDER BY seq LIMIT ?", (excess_rows,)).fetchall()
            self._db.execute("DELETE FROM samples WHERE seq <= ?", (oldest[-1][0],))
            rows -= len(oldest)
            total -= sum(n for _, n in oldest)

    def _expire(self) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM samples WHERE created < ?", (time.time() - self.retention_s,))
