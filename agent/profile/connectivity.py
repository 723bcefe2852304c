"""Broker and local API sections: how the agent reaches the cloud and its callers.

Secrets are referenced, never written in the profile: a profile is meant to be
committed, copied between devices and printed in bug reports.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints, model_validator

from agent.profile.base import (
    ENV_NAME_PATTERN,
    ID_PATTERN,
    TOPIC_PREFIX_PATTERN,
    FilePath,
    StrictModel,
    rule_broken,
)

Host = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:%-]{1,253}$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class TlsConfig(StrictModel):
    """TLS to the broker; present means on. Paths are relative to the profile's directory."""

    ca_file: FilePath | None = Field(
        None,
        description="CA certificate(s) that signed the broker's certificate; null trusts"
        " the system store.",
    )
    cert_file: FilePath | None = Field(
        None, description="Client certificate for mutual TLS; needs key_file."
    )
    key_file: FilePath | None = Field(
        None, description="Private key of cert_file; keep it readable by the agent only."
    )
    insecure: bool = Field(
        False,
        description="Skip checking the broker's hostname against its certificate. For lab"
        " set-ups only: it allows a man in the middle.",
    )

    @model_validator(mode="after")
    def check_client_pair(self) -> TlsConfig:
        """A client certificate is useless without its key and the reverse."""
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise rule_broken(
                f"mutual TLS needs both cert_file and key_file: set {missing} or remove"
                " the other one"
            )
        return self


class BrokerConfig(StrictModel):
    """The MQTT v5 broker the agent offloads through and reports to."""

    unknown_key_hints: ClassVar[dict[str, str]] = {
        "password": "inline passwords are not allowed: put it in an environment variable"
        " and set password_env, or in a file and set password_file",
    }

    host: Host = Field("localhost", description="Broker hostname or IP address.")
    port: Port = Field(1883, description="Broker port; 8883 is the usual one with TLS.")
    tls: TlsConfig | None = Field(None, description="TLS settings; null connects in clear.")
    username: str | None = Field(
        None, min_length=1, max_length=256, description="MQTT username; null connects anonymously."
    )
    password_env: Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)] | None = Field(
        None, description="Name of the environment variable holding the MQTT password."
    )
    password_file: FilePath | None = Field(
        None,
        description="File holding the MQTT password (trailing newline ignored), e.g. a"
        " systemd credential or a Kubernetes secret mount.",
    )
    keepalive_s: int = Field(
        30,
        ge=5,
        le=3600,
        description="MQTT keepalive; the broker publishes the agent's offline Last Will"
        " after about 1.5 times this without traffic.",
    )
    topic_prefix: Annotated[str, StringConstraints(pattern=TOPIC_PREFIX_PATTERN)] = Field(
        "fedge/v1", description="First topic levels of every fedge topic; the same on all peers."
    )
    client_id: Annotated[str, StringConstraints(pattern=ID_PATTERN)] | None = Field(
        None, description="MQTT client id; null uses device.id."
    )

    @model_validator(mode="after")
    def check_password_reference(self) -> BrokerConfig:
        """One password source, and only together with a username."""
        if self.password_env is not None and self.password_file is not None:
            raise rule_broken(
                "password_env and password_file are both set: keep one", "password_file"
            )
        source = "password_env" if self.password_env is not None else "password_file"
        if self.username is None and getattr(self, source) is not None:
            raise rule_broken(f"{source} is set but username is not: add username", source)
        return self


class ApiConfig(StrictModel):
    """The agent's local HTTP API (KServe Open Inference Protocol v2, /metrics)."""

    enabled: bool = Field(True, description="Serve the local HTTP API.")
    host: Host = Field(
        "127.0.0.1",
        description="Address to listen on; 127.0.0.1 keeps it on the device, 0.0.0.0 opens"
        " it to the network (there is no authentication).",
    )
    port: Port = Field(8080, description="Port to listen on.")
