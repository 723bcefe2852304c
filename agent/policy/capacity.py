"""Capacity rules around the confidence policies.

Whether an offload may happen at all (broker up, in-flight cap, cloud status and
the request's priority), and whether a request should skip the local queue
(queue depth, estimated local wait against the latency SLO).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

HIGH_PRIORITY = 7  # at or above: offload even when the cloud says it is overloaded


class Reason(str, Enum):
    """Why a request was answered where it was: offloads by reason, degraded answers by cause (metrics, heartbeat)."""

    UNCONFIDENT = "unconfident"  # offloaded: the local answer was not sure enough
    CAPACITY = "capacity"  # offloaded: the local queue was past its limits
    BROKER_DOWN = "broker_down"  # degraded: no broker connection, or it dropped while waiting
    CLOUD_BUSY = "cloud_busy"  # degraded: the cloud's status says overloaded, or there is none
    INFLIGHT_FULL = "inflight_full"  # degraded: max_inflight offloads already out
    CLOUD_LATE = "cloud_late"  # degraded: no cloud answer within the deadline
    CLOUD_ERROR = "cloud_error"  # degraded: the cloud answered with an error
    BAD_REPLY = "bad_reply"  # degraded: the cloud's answer was unreadable or of the wrong shape


class Pressure(NamedTuple):
    """The load picture at decision time (a tuple: it is built for every request)."""

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
