"""What every confidence policy answers: is this request worth the cloud's time?"""

from __future__ import annotations

from abc import ABC, abstractmethod


class ConfidencePolicy(ABC):
    """Decides from one request's confidence whether it is worth the cloud's time."""

    @abstractmethod
    def wants_offload(self, confidence: float) -> bool:
        """Decide for one request (policies may learn from the stream, so call it once per request)."""

    @property
    @abstractmethod
    def threshold(self) -> float:
        """The confidence below which requests are offloaded right now."""
