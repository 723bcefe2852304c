"""The smaller profile sections: device identity, storage, federated, logging, metrics."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from agent.config.base import HOST_PORT_PATTERN, FilePath, Identifier, StrictModel, rule_broken

_MIB = 1024 * 1024


class DeviceConfig(StrictModel):
    """Who this device is; the id names its MQTT topics, so it must be unique in the fleet."""

    id: Identifier = Field(
        description="Unique device id, e.g. pi4-kitchen-01: part of its MQTT topics"
        " (fedge/v1/device/{id}/...) and the default MQTT client id."
    )
    kind: Identifier = Field(
        "generic",
        description="Device kind, e.g. raspberry-pi-4: reported in heartbeats so the cloud"
        " can group devices and pick model variants for them.",
    )


class SampleStoreConfig(StrictModel):
    """Offloaded inputs kept with the cloud's answers: the training data of federated rounds."""

    enabled: bool = Field(
        True,
        description="Keep samples. Turn off where inputs are private and must not be stored"
        " on the device (federated learning then has no data).",
    )
    max_rows: int = Field(50_000, ge=1, le=100_000_000, description="Most samples kept.")
    max_bytes: int = Field(
        256 * _MIB,
        ge=1024,
        le=1 << 40,
        description="Most bytes of sample data kept; the oldest go first.",
    )
    retention_days: int = Field(
        30, ge=1, le=3650, description="Samples older than this are deleted."
    )


class StorageConfig(StrictModel):
    """Where the agent keeps state: models, the sample store, caches."""

    directory: FilePath = Field(
        "/var/lib/fedge",
        description="State directory, relative to the profile's directory unless absolute.",
    )
    samples: SampleStoreConfig = Field(
        default_factory=SampleStoreConfig, description="The sample store."
    )


class FederatedConfig(StrictModel):
    """Taking part in Flower fine-tuning rounds on the locally stored samples.

    The agent starts a Flower SuperNode (a separate process: the agent itself never loads torch or
    Flower) when the cloud opens a training window, and stops it when the window closes.
    """

    enabled: bool = Field(False, description="Join federated rounds (needs `pip install fedge[fl]` on the device).")
    server_address: Annotated[str, StringConstraints(pattern=HOST_PORT_PATTERN)] | None = Field(
        None, description="Flower server (SuperLink) Fleet API address as host:port; needed when enabled."
    )
    local_epochs: int = Field(10, ge=1, le=100, description="Epochs over local samples per round (unless the server"
                              " sets them). Many gentle passes: with the server's default learning rate (0.002), 10"
                              " cut the offload the edge needs most; 1 to 2 barely moved it.")
    batch_size: int = Field(32, ge=2, le=4096, description="Training batch size.")
    min_samples: int = Field(
        256,
        ge=1,
        le=10_000_000,
        description="Samples needed before the device joins a round; with fewer it declines, and says why.",
    )
    root_certificates: FilePath | None = Field(
        None,
        description="CA certificate that signed the SuperLink's TLS certificate; set means TLS, null connects"
        " without TLS (lab set-ups only).",
    )
    auth_key_file: FilePath | None = Field(
        None,
        description="The SuperNode's private key (ECDSA on a NIST curve, e.g. P-384; not Ed25519) for SuperLink"
        " node authentication; its public key is registered with `flwr supernode register`. Needs"
        " root_certificates.",
    )
    clientapp_port: int = Field(
        9094, ge=1, le=65535,
        description="Local port the SuperNode serves its ClientApp processes on (127.0.0.1); every SuperNode on"
        " one host needs its own.",
    )

    @model_validator(mode="after")
    def check_server(self) -> FederatedConfig:
        """Taking part needs somewhere to take part."""
        if self.enabled and self.server_address is None:
            raise rule_broken(
                "enabled is true but server_address is not set: add server_address"
                " (host:port) or set enabled: false"
            )
        return self

    @model_validator(mode="after")
    def check_auth_has_tls(self) -> FederatedConfig:
        """Flower refuses node authentication over a connection without TLS."""
        if self.auth_key_file is not None and self.root_certificates is None:
            raise rule_broken("auth_key_file needs TLS: set root_certificates (the SuperLink's CA) as well",
                              "auth_key_file")
        return self


class LoggingConfig(StrictModel):
    """Agent log output (stderr, so systemd and containers collect it)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Least severe level written; any letter case."
    )
    format: Literal["text", "json"] = Field(
        "text", description="text for people, json (one object a line) for log shippers."
    )

    @field_validator("level", mode="before")
    @classmethod
    def upper_case_level(cls, value: object) -> object:
        """`level: info` is what people write; accept it."""
        return value.upper() if isinstance(value, str) else value


class MetricsConfig(StrictModel):
    """Prometheus metrics on the local API and heartbeats to the cloud."""

    enabled: bool = Field(True, description="Collect metrics and send heartbeats. Heartbeats travel on the broker"
                          " connection, which the agent opens when offload, updates or federated training is on, or"
                          " when the profile (or a FEDGE__BROKER__ variable) names a broker: a device that only"
                          " answers locally and names none reports to nobody.")
    heartbeat_interval_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Seconds between heartbeats (model versions, offload rate, queue depth,"
        " latency percentiles) to the cloud.",
    )
