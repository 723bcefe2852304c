"""Updates section: following the cloud's signed model releases, and the gate a new model must pass."""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.config.base import FilePath, Identifier, StrictModel, rule_broken


class ShadowGate(StrictModel):
    """What a new model must show on recent traffic before it replaces the running one."""

    min_samples: int = Field(
        32,
        ge=0,
        le=100_000,
        description="Recent samples needed to judge a new model; with fewer (a new device) it is"
        " installed on its signature alone, and the heartbeat says so.",
    )
    max_samples: int = Field(
        256, ge=1, le=100_000, description="Most recent samples the old and new model both run on."
    )
    min_agreement: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Least share of the recent samples the old model answers right (by the user's label, else"
        " the cloud's class) on which the new model gives the same class. Where the old model is wrong the new"
        " one may differ: that is what a better model does on the hard cases the store keeps.",
    )
    max_accuracy_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Most the new model's accuracy against the cloud's labels may fall below the"
        " old model's (0.05 = five points).",
    )

    @model_validator(mode="after")
    def check_sample_bounds(self) -> ShadowGate:
        """A gate that needs more samples than it may read never judges anything."""
        if self.min_samples > self.max_samples:
            raise rule_broken(
                f"min_samples ({self.min_samples}) is above max_samples ({self.max_samples}):"
                " lower min_samples or raise max_samples",
                "min_samples",
            )
        return self


class UpdatesConfig(StrictModel):
    """Signed model releases from the cloud: verified, shadow-evaluated, swapped atomically."""

    enabled: bool = Field(
        False,
        description="Follow the releases the cloud publishes for this device's group (models"
        " given by `name`, without a `version` pin). Uses the broker connection.",
    )
    public_key_file: FilePath | None = Field(
        None,
        description="The cloud's Ed25519 release key (release.pub from `fedge-cloud keys init`),"
        " relative to the profile's directory unless absolute; needed when enabled.",
    )
    group: Identifier = Field(
        "default",
        description="Device group: rollouts target a group (and canaries a few devices in it);"
        " reported in heartbeats.",
    )
    artifact_timeout_s: float = Field(
        60.0, ge=1, le=3600, description="How long to wait for a release's model file."
    )
    retry_after_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="When a release could not be finished (no model file in time, local queue"
        " full): seconds until it is tried again.",
    )
    gate: ShadowGate = Field(
        default_factory=ShadowGate, description="What a new model must show before it serves."
    )

    @model_validator(mode="after")
    def check_key(self) -> UpdatesConfig:
        """Without the cloud's public key no release can be verified, so none would install."""
        if self.enabled and self.public_key_file is None:
            raise rule_broken(
                "enabled is true but public_key_file is not set: add public_key_file (the"
                " cloud's release.pub) or set enabled: false",
                "public_key_file",
            )
        return self
