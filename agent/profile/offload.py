"""Offload section: when a task's request goes to the cloud, and how much may wait.

A policy is picked by `mode` (threshold or budget), so each mode carries only
the settings it uses. Capacity limits live here too, because being over
capacity is the other reason to offload (or to answer "overloaded").
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from agent.config.base import StrictModel, rule_broken

Metric = Literal["max_prob", "margin", "entropy"]
#: Metrics that are probabilities or differences of probabilities, so live in [0, 1].
UNIT_METRICS: frozenset[str] = frozenset({"max_prob", "margin"})


class FusionBase(StrictModel):
    """How the edge and cloud answers combine when both exist."""

    kind_noun: ClassVar[str] = "fusion method"

    method: str = Field(description="Fusion method.")


class NoFusion(FusionBase):
    """The cloud's answer replaces the edge's."""

    method: Literal["none"] = Field("none", description="Use the cloud's answer as is.")


class GeometricMeanFusion(FusionBase):
    """Weighted geometric mean of edge and cloud class probabilities, renormalised."""

    method: Literal["geometric_mean"] = Field(
        "geometric_mean", description="Weighted geometric mean of both distributions."
    )
    weight: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Weight of the cloud's probabilities; the edge's get 1 - weight."
        " 1 trusts the cloud alone.",
    )


Fusion = Annotated[NoFusion | GeometricMeanFusion, Field(discriminator="method")]


class PolicyBase(StrictModel):
    """Settings every offload mode shares: the metric, fusion and capacity limits."""

    kind_noun: ClassVar[str] = "offload mode"

    mode: str = Field(description="How the offload decision is made.")
    metric: Metric = Field(
        "max_prob",
        description="Confidence metric from the local class probabilities: max_prob (top"
        " probability), margin (top minus second) or entropy (higher = less sure).",
    )
    fusion: Fusion = Field(
        default_factory=NoFusion, description="How a cloud answer combines with the local one."
    )
    max_queue_depth: int = Field(
        32,
        ge=1,
        le=100_000,
        description="Requests waiting for the local model; past this, new ones are"
        " offloaded, or answered 'overloaded' by priority when offloads are full too.",
    )
    max_inflight: int = Field(
        8,
        ge=1,
        le=10_000,
        description="Offloaded requests awaiting the cloud at once; past this, requests"
        " get the local answer, marked degraded.",
    )
    local_latency_slo_ms: float = Field(
        50.0,
        gt=0,
        le=60_000,
        description="Target local latency; when the queue would exceed it, requests are"
        " offloaded instead of waiting.",
    )
    default_deadline_ms: float = Field(
        1000.0,
        gt=0,
        le=600_000,
        description="Deadline for requests that do not carry one; the MQTT message expiry"
        " of the offload. After it the local answer is returned, marked degraded.",
    )

    audit_rate: float = Field(
        0.02,
        ge=0,
        le=0.5,
        description="Share of confident local answers also sent to the cloud in the background (never delaying"
        " the answer) and kept with the cloud's probabilities: unbiased training data for federated rounds, and a"
        " live estimate of how often the edge agrees with the cloud (heartbeat, /metrics). 0 turns audits off.",
    )

    @model_validator(mode="after")
    def check_deadline_covers_slo(self) -> PolicyBase:
        """A deadline shorter than the local SLO leaves no time to fall back locally."""
        if self.default_deadline_ms <= self.local_latency_slo_ms:
            raise rule_broken(
                f"default_deadline_ms ({self.default_deadline_ms:g}) must be larger than"
                f" local_latency_slo_ms ({self.local_latency_slo_ms:g}): the local answer"
                " is the fallback and has to fit inside the deadline",
                "default_deadline_ms",
            )
        return self


class ThresholdPolicy(PolicyBase):
    """Offload when the local confidence is below a fixed threshold (above, for entropy)."""

    mode: Literal["threshold"] = Field("threshold", description="A fixed confidence threshold.")
    threshold: float = Field(
        ge=0,
        le=1_000,
        description="For max_prob and margin, a value in [0, 1]: offload when confidence is"
        " below it. For entropy, a value in nats >= 0: offload when entropy is above it.",
    )

    @model_validator(mode="after")
    def check_threshold_range(self) -> ThresholdPolicy:
        """max_prob and margin are probabilities; a threshold above 1 offloads everything."""
        if self.metric in UNIT_METRICS and self.threshold > 1:
            raise rule_broken(
                f"threshold {self.threshold:g} is out of range for metric {self.metric}:"
                " use a value in [0, 1]",
                "threshold",
            )
        return self


class BudgetPolicy(PolicyBase):
    """Offload a target fraction of requests: the least confident ones, recently."""

    mode: Literal["budget"] = Field("budget", description="A target offload rate.")
    target_rate: float = Field(
        gt=0,
        lt=1,
        description="Fraction of requests to offload, e.g. 0.1; the threshold adapts to it.",
    )
    window: int = Field(
        1000,
        ge=10,
        le=1_000_000,
        description="Recent requests the adaptive threshold is computed over.",
    )


OffloadPolicy = Annotated[ThresholdPolicy | BudgetPolicy, Field(discriminator="mode")]
