"""The fixed-threshold policy: offload below a confidence the profile sets."""

from __future__ import annotations

from agent.policy.base import ConfidencePolicy


class FixedThreshold(ConfidencePolicy):
    """Offload below a fixed confidence."""

    def __init__(self, threshold: float) -> None:
        self._threshold = threshold

    def wants_offload(self, confidence: float) -> bool:
        return confidence < self._threshold

    @property
    def threshold(self) -> float:
        return self._threshold
