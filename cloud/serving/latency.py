"""Expected run time of one model per batch size, learned from the worker's own runs.

Model selection needs "how long would this model take for a batch of n" before
it runs. Each batch size seen keeps an exponentially weighted mean of measured
run times; an unseen size is interpolated between its measured neighbours (run
time grows about linearly with batch size), so the two warm-up runs at batch 1
and at the largest batch give an estimate for every size from the start.
"""

from __future__ import annotations

import bisect
import threading

DEFAULT_ALPHA = 0.2  # weight of the newest run: recent enough to follow load, smooth enough to ignore one hiccup


class LatencyEwma:
    """Run-time EWMAs in milliseconds, keyed by batch size; safe to read while the batch thread writes."""

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"EWMA weight must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._ms: dict[int, float] = {}
        self._lock = threading.Lock()

    def observe(self, batch: int, ms: float) -> None:
        """Fold one measured run of ``batch`` rows into its batch size's mean."""
        with self._lock:
            old = self._ms.get(batch)
            self._ms[batch] = ms if old is None else old + self.alpha * (ms - old)

    def expected(self, batch: int) -> float:
        """Expected milliseconds for ``batch`` rows (0.0 before any run was measured)."""
        with self._lock:
            if batch in self._ms:
                return self._ms[batch]
            sizes = sorted(self._ms)
            if not sizes:
                return 0.0
            i = bisect.bisect_left(sizes, batch)
            if i == 0:  # below the smallest measured size: no faster than it
                return self._ms[sizes[0]]
            if i == len(sizes):  # above the largest: scale in proportion
                return self._ms[sizes[-1]] * batch / sizes[-1]
            lo, hi = sizes[i - 1], sizes[i]
            return self._ms[lo] + (self._ms[hi] - self._ms[lo]) * (batch - lo) / (hi - lo)

    def snapshot(self) -> dict[str, float]:
        """The measured means, for status reports (JSON keys are text)."""
        with self._lock:
            return {str(b): round(ms, 3) for b, ms in sorted(self._ms.items())}
