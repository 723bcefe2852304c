"""The floor: bare ``session.run`` in this process, with the servers' session options.

No HTTP, no encoding, no queue: what any server's p50 at batch 1 and its
rows per second can at best approach on this machine, with the same thread budget.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent.session import open_session

BATCHES = (1, 2, 4, 8, 16, 32)


def _timed_runs(run: Callable[[], object], seconds: float, least: int = 20) -> list[float]:
    """Seconds per call of ``run()``, calling it for ``seconds`` (and at least ``least`` times)."""
    run()  # the first run allocates
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < least:
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def floor(model: Path, row_shape: list[int], threads: int, seconds: float,
          batches: tuple[int, ...] = BATCHES) -> dict[str, Any]:
    """p50 at batch 1 (ms) and rows/s at each batch size; ``best_rows_per_s`` over them."""
    session = open_session(model, intra_op_threads=threads)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    rows_per_s: dict[str, float] = {}
    p50_ms = 0.0
    for batch in batches:
        feed = {name: rng.standard_normal((batch, *row_shape)).astype(np.float32)}
        times = _timed_runs(functools.partial(session.run, None, feed), seconds / len(batches))
        if batch == 1:
            p50_ms = statistics.median(times) * 1000
        rows_per_s[str(batch)] = round(batch / statistics.median(times), 1)
    best = max(rows_per_s, key=lambda b: rows_per_s[b])
    return {"p50_ms_batch1": round(p50_ms, 4), "rows_per_s_by_batch": rows_per_s,
            "best_rows_per_s": rows_per_s[best], "best_batch": int(best)}
