"""The sample store: bounds, feedback, privacy switch, and surviving kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.samples import SampleStore


def test_samples_round_trip_with_soft_labels_and_feedback(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.db")
    x = np.arange(40, dtype=np.float32).reshape(1, 40)
    store.add("a", "mnist1d", x, np.full(10, 0.1, np.float32))
    store.add("b", "mnist1d", x + 1)
    assert store.feedback("b", 7) and not store.feedback("missing", 1)
    data = store.training_set("mnist1d")
    np.testing.assert_array_equal(data.x, np.concatenate([x, x + 1]))
    assert data.labels.tolist() == [-1, 7]
    assert np.allclose(data.soft[0], 0.1) and np.isnan(data.soft[1]).all()
    assert store.count("digits") == 0


def test_a_label_outside_the_soft_labels_is_refused_every_time(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.db")
    store.add("a", "mnist1d", np.zeros((1, 40), np.float32), np.full((1, 10), 0.1, np.float32))
    store.add("bare", "mnist1d", np.zeros((1, 40), np.float32))  # no soft labels: the classes are unknown
    assert store.feedback("a", 9)
    for label in (10, 99, -1, 10):  # not only the first time: the width comes from the stored probabilities
        with pytest.raises(ValueError, match="not a class"):
            store.feedback("a", label)
    assert store.feedback("bare", 12) and not store.feedback("a", 3, task="digits")  # another task's sample
    with pytest.raises(ValueError, match="not a class"):
        store.feedback("bare", -1)
    assert store.training_set("mnist1d").labels.tolist() == [9, 12]


def test_a_batch_request_sample_is_one_training_row_per_input_row(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.db")
    soft = np.eye(3, dtype=np.float32)
    store.add("one", "t", np.full((1, 4), 1, np.float32), soft[:1])
    store.add("batch", "t", np.stack([np.full(4, 2, np.float32), np.full(4, 3, np.float32)]), soft[1:])
    store.add("bare", "t", np.full((1, 4), 4, np.float32))
    with pytest.raises(ValueError, match="2 rows"):  # one label cannot name the class of each row
        store.feedback("batch", 1)
    data = store.training_set("t")
    assert data.x[:, 0].tolist() == [1, 2, 3, 4] and data.labels.tolist() == [-1, -1, -1, -1]
    np.testing.assert_array_equal(data.soft[:3], soft)
    assert data.soft.shape == (4, 3) and np.isnan(data.soft[3]).all()


def test_the_newest_labelled_samples_come_from_the_query(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.db")
    for i in range(6):  # odd ones carry the cloud's probabilities, 4 a user's label, the rest nothing
        store.add(f"r{i}", "t", np.full((1, 4), i, np.float32), np.full(3, 0.3, np.float32) if i % 2 else None)
    assert store.feedback("r4", 2)
    newest = store.training_set("t", newest=3, labelled=True)
    assert newest.x[:, 0].tolist() == [3, 4, 5] and newest.labels.tolist() == [-1, 2, -1]
    assert store.training_set("t", newest=2).x[:, 0].tolist() == [4, 5]
    assert store.training_set("t", labelled=True).x[:, 0].tolist() == [1, 3, 4, 5]


def test_bounded_by_rows_and_bytes_oldest_first(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.db", max_rows=5, max_bytes=10_000)
    for i in range(8):
        store.add(f"r{i}", "t", np.full((1, 40), i, np.float32))
    assert store.count() == 5 and store.training_set("t").x[:, 0].tolist() == [3, 4, 5, 6, 7]
    small = SampleStore(tmp_path / "b.db", max_rows=100, max_bytes=3 * 160)
    for i in range(6):
        small.add(f"r{i}", "t", np.full((1, 40), i, np.float32))
    assert small.count() == 3


def test_disabled_store_keeps_nothing(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "off.db", enabled=False)
    store.add("a", "t", np.zeros((1, 4), np.float32))
    assert store.count() == 0 and not store.feedback("a", 1)
    assert not (tmp_path / "off.db").exists()


def test_committed_rows_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    writer = f"""
import sys, numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from agent.samples import SampleStore
from pathlib import Path
store = SampleStore(Path({str(db)!r}))
i = 0
while True:
    store.add(f"r{{i}}", "t", np.full((1, 40), i, np.float32))
    print(i, flush=True)
    i += 1
"""
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = -1
    deadline = time.monotonic() + 30
    while last < 200 and time.monotonic() < deadline:
        last = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    store = SampleStore(db)
    rows = store.training_set("t").x[:, 0].astype(int).tolist()
    assert rows[: last + 1] == list(range(last + 1))  # every acknowledged row, in order
