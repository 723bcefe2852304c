"""The root of a device profile, and its JSON Schema for editors."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from agent.config.base import FileConfig, TaskName, rule_broken
from agent.profile.connectivity import ApiConfig, BrokerConfig
from agent.profile.hardware import HardwareConfig
from agent.profile.model_spec import ModelSpec
from agent.profile.offload import OffloadPolicy
from agent.profile.sections import (
    DeviceConfig,
    FederatedConfig,
    LoggingConfig,
    MetricsConfig,
    StorageConfig,
)
from agent.profile.updates import UpdatesConfig

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class Profile(FileConfig):
    """A fedge device profile: one YAML file per device kind (edge_profiles/*.yaml)."""

    device: DeviceConfig = Field(description="Device identity.")
    hardware: HardwareConfig = Field(
        default_factory=HardwareConfig, description="Execution providers, threads, memory."
    )
    models: dict[TaskName, ModelSpec] = Field(
        min_length=1,
        description="Local model per task, keyed by task name (e.g. mnist1d); the task name"
        " is part of the offload topic.",
    )
    offload: dict[TaskName, OffloadPolicy] = Field(
        default_factory=dict,
        description="Offload policy per task; a task without one is answered locally only.",
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig, description="MQTT v5 broker.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="Local HTTP API.")
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="State directory and sample store."
    )
    federated: FederatedConfig = Field(
        default_factory=FederatedConfig, description="Federated fine-tuning."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log output.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Metrics and heartbeats."
    )
    updates: UpdatesConfig = Field(
        default_factory=UpdatesConfig, description="Signed model releases from the cloud."
    )

    @model_validator(mode="after")
    def check_offload_tasks_have_models(self) -> Profile:
        """A policy decides between the local model and the cloud; it needs the local model."""
        for task in self.offload:
            if task not in self.models:
                known = ", ".join(sorted(self.models))
                raise rule_broken(
                    f"offload policy for task '{task}', which has no model: add models.{task}"
                    f" or remove this policy (tasks with models: {known})",
                    "offload",
                    task,
                )
        return self

    @model_validator(mode="after")
    def check_federated_has_samples(self) -> Profile:
        """Federated rounds train on stored samples; without them the device has nothing."""
        if self.federated.enabled and not self.storage.samples.enabled:
            raise rule_broken(
                "federated.enabled needs stored samples to train on: set"
                " storage.samples.enabled: true or federated.enabled: false",
                "federated",
                "enabled",
            )
        return self

    @property
    def mqtt_client_id(self) -> str:
        """`broker.client_id`, defaulting to the device id."""
        return self.broker.client_id or self.device.id


def profile_json_schema() -> dict[str, Any]:
    """JSON Schema of a profile, for editors (yaml-language-server) and other tools."""
    schema = Profile.model_json_schema()
    schema["title"] = "fedge device profile"
    return {"$schema": SCHEMA_DIALECT, **schema}
