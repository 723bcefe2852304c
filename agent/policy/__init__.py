"""Offload decisions: confidence policies registered by the profile's ``mode``, and capacity rules.

One module per policy; a new mode is a new module, a new entry in ``POLICIES``
and a new profile model in agent/profile/offload.py.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.confidence import threshold_to_confidence
from agent.policy.base import ConfidencePolicy
from agent.policy.budget import OffloadBudget
from agent.policy.capacity import HIGH_PRIORITY, CapacityLimits, Pressure, Reason, may_offload, over_capacity
from agent.policy.threshold import FixedThreshold
from agent.profile.offload import BudgetPolicy, OffloadPolicy, ThresholdPolicy


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


__all__ = [
    "HIGH_PRIORITY",
    "POLICIES",
    "CapacityLimits",
    "ConfidencePolicy",
    "FixedThreshold",
    "OffloadBudget",
    "Pressure",
    "Reason",
    "confidence_policy",
    "may_offload",
    "over_capacity",
]
