"""The budget policy: offload a target share of traffic, the least confident part of it."""

from __future__ import annotations

import threading

import numpy as np

from agent.policy.base import ConfidencePolicy


class OffloadBudget(ConfidencePolicy):
    """Offload the least confident ``target_rate`` of recent traffic.

    The threshold is a quantile of the last ``window`` confidences, so it follows
    input drift: when inputs get harder the threshold falls and the rate stays on
    target instead of the bill growing. While the window still holds the old
    inputs the realised rate lags; the quantile asked for is corrected by that
    lag (an integral term over the same window), so the rate recovers faster.
    """

    _WARMUP = 20

    def __init__(self, target_rate: float, window: int) -> None:
        self.target_rate = target_rate
        self._recent = np.empty(window, dtype=np.float64)
        self._count = 0
        self._threshold = float("-inf")
        self._realised = target_rate  # moving average of decisions, over about one window
        self._lock = threading.Lock()

    def wants_offload(self, confidence: float) -> bool:
        with self._lock:
            size = len(self._recent)
            self._recent[self._count % size] = confidence
            self._count += 1
            if self._count < self._WARMUP:
                return False
            quantile = min(1.0, max(0.0, 2 * self.target_rate - self._realised))
            self._threshold = float(np.quantile(self._recent[: min(self._count, size)], quantile))
            offload = confidence <= self._threshold
            self._realised += (float(offload) - self._realised) / size
            return offload

    @property
    def threshold(self) -> float:
        return self._threshold
