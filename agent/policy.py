"""Offload decisions: confidence policies (threshold, budget) and the capacity rules around them.

Policies are registered by the profile's ``mode`` name; each sees one
confidence per request and says offload or not. The capacity rules decide
whether an offload may happen at all (in-flight cap, cloud status) and
whether a request should skip the local queue (queue depth, local wait).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from agent.confidence import threshold_to_confidence
from agent.profile.offload import BudgetPolicy, OffloadPolicy, ThresholdPolicy

HIGH_PRIORITY = 7  # at or above: offload even when the cloud says it is overloaded


class ConfidencePolicy:
    """Decides from one request's confidence whether it is worth the cloud's time."""

    def wants_offload(self, confidence: float) -> bool:
        raise NotImplementedError

    @property
    def threshold(self) -> float:
        raise NotImplementedError


class FixedThreshold(ConfidencePolicy):
    """Offload below a fixed confidence."""

    def __init__(self, threshold: float) -> None:
        self._threshold = threshold

    def wants_offload(self, confidence: float) -> bool:
        return confidence < self._threshold

    @property
    def threshold(self) -> float:
        return self._threshold


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


def _fixed(policy: OffloadPolicy) -> ConfidencePolicy:
    assert isinstance(policy, ThresholdPolicy)
    return FixedThreshold(threshold_to_confidence(policy.metric, policy.threshold))


def _budget(policy: OffloadPolicy) -> ConfidencePolicy:
    assert isinstance(policy, BudgetPolicy)
    return OffloadBudget(policy.target_rate, policy.window)


#: One factory per profile ``mode``; a new mode is a new entry here and a new profile model.
POLICIES: dict[str, Callable[[OffloadPolicy], ConfidencePolicy]] = {"threshold": _fixed, "budget": _budget}


def confidence_policy(policy: OffloadPolicy) -> ConfidencePolicy:
    return POLICIES[policy.mode](policy)


class Reason(str, Enum):
    """Why a request was answered where it was (counted in metrics)."""

    CONFIDENT = "confident"
    UNCONFIDENT = "unconfident"
    CAPACITY = "capacity"
    NO_POLICY = "no_policy"
    BROKER_DOWN = "broker_down"
    CLOUD_BUSY = "cloud_busy"
    INFLIGHT_FULL = "inflight_full"


@dataclass(frozen=True)
class Pressure:
    """The load picture at decision time."""

    queue_depth: int
    estimated_wait_ms: float
    inflight: int
    broker_connected: bool
    cloud_available: bool  # a fresh retained cloud status that does not say overloaded


@dataclass(frozen=True)
class CapacityLimits:
    max_queue_depth: int
    max_inflight: int
    local_latency_slo_ms: float


def may_offload(limits: CapacityLimits, pressure: Pressure, priority: int) -> Reason | None:
    """None when an offload may be sent now, else the reason it may not."""
    if not pressure.broker_connected:
        return Reason.BROKER_DOWN
    if pressure.inflight >= limits.max_inflight:
        return Reason.INFLIGHT_FULL
    if not pressure.cloud_available and priority < HIGH_PRIORITY:
        return Reason.CLOUD_BUSY
    return None


def over_capacity(limits: CapacityLimits, pressure: Pressure) -> bool:
    """The local queue is past its depth, or waiting in it would break the local latency SLO."""
    return pressure.queue_depth >= limits.max_queue_depth or pressure.estimated_wait_ms > limits.local_latency_slo_ms

