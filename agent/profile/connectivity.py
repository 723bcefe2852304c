"""Broker and local API sections: how the agent reaches the cloud and its callers."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from agent.config.base import ID_PATTERN, TOPIC_PREFIX_PATTERN, StrictModel
from agent.config.broker import Credentials, Host, Port, TlsConfig


class BrokerConfig(Credentials):
    """The MQTT v5 broker the agent offloads through and reports to."""

    host: Host = Field("localhost", description="Broker hostname or IP address.")
    port: Port = Field(1883, description="Broker port; 8883 is the usual one with TLS.")
    tls: TlsConfig | None = Field(None, description="TLS settings; null connects in clear.")
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


class ApiConfig(StrictModel):
    """The agent's local HTTP API (KServe Open Inference Protocol v2, /metrics)."""

    enabled: bool = Field(True, description="Serve the local HTTP API.")
    host: Host = Field(
        "127.0.0.1",
        description="Address to listen on; 127.0.0.1 keeps it on the device, 0.0.0.0 opens"
        " it to the network (there is no authentication).",
    )
    port: Port = Field(8080, description="Port to listen on.")
