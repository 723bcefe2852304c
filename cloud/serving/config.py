"""`fedge-cloud serve --config cloud.yaml`: the strict schema, loading with file:line:col errors, secrets.

Same rules as device profiles (agent/profile): unknown keys and loose types are
errors, every field has a bound, a default and a description, and passwords
are referenced (environment variable or file), never written in the file.
Command-line flags override the file; a flag's bad value is reported under the
flag's name, by the same explanation code that reports the file's lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from agent.config.base import (
    STORE_NAME_PATTERN,
    TOPIC_PREFIX_PATTERN,
    FileConfig,
    FilePath,
    Identifier,
    StrictModel,
    TaskName,
)
from agent.config.broker import Credentials, Host, Port, TlsConfig
from agent.config.loader import read_text, validate_document
from agent.config.problems import Location
from agent.config.yaml_source import DataPath, Document, DocumentKind, SourceMap, parse_document

StoreName = Annotated[str, StringConstraints(pattern=STORE_NAME_PATTERN)]


class CloudBrokerConfig(Credentials):
    """The MQTT v5 broker the workers and the coordinator connect to; the credentials above are the workers'."""

    host: Host = Field("localhost", title="Host", description="Broker hostname or IP address.")
    port: Port = Field(1883, title="Port", description="Broker port; 8883 is the usual one with TLS.")
    tls: TlsConfig | None = Field(None, title="TLS", description="TLS settings (paths relative to the config"
                                  " file); null connects in clear.")
    keepalive_s: int = Field(30, ge=5, le=3600, title="Keepalive (s)", description="MQTT keepalive; the broker"
                             " publishes the coordinator's offline Last Will after about 1.5 times this.")
    topic_prefix: Annotated[str, StringConstraints(pattern=TOPIC_PREFIX_PATTERN)] = Field(
        "fedge/v1", title="Topic prefix", description="First topic levels of every fedge topic; the same on all"
        " peers.")
    coordinator: Credentials | None = Field(
        None, title="Coordinator user", description="The coordinator's own broker user (fedge-cloud acl gives it"
        " one: it writes the cloud status, workers may not); null uses the workers' credentials.")


class WorkersConfig(StrictModel):
    """The worker processes and how each schedules requests."""

    count: int = Field(2, ge=1, le=64, title="Workers", description="Worker processes on this machine; more"
                       " machines with the same share_group add capacity.")
    share_group: Identifier = Field("workers", title="Share group", description="MQTT shared-subscription group:"
                                    " the broker spreads requests over every worker in it.")
    max_batch: int = Field(32, ge=1, le=1024, title="Max batch", description="Most requests run together in one"
                           " model call.")
    max_delay_ms: float = Field(2.0, ge=0, le=1000, title="Max batch delay (ms)", description="How long a batch"
                                " waits to fill; 0 runs what is there.")
    max_queue: int = Field(256, ge=1, le=1_000_000, title="Max queue", description="Requests a worker holds;"
                           " beyond it the lowest priority is answered 'overloaded'.")
    threads: int = Field(1, ge=1, le=64, title="Threads", description="ONNX Runtime intra-op threads per worker;"
                         " workers x threads should not exceed the cores.")
    status_interval_s: float = Field(1.0, ge=0.1, le=60, title="Status interval (s)", description="How often"
                                     " workers report and the coordinator republishes the cloud status.")


class DashboardConfig(StrictModel):
    """The operator dashboard the coordinator serves (cloud/dashboard): read-only, so localhost unless you say."""

    host: Host = Field("127.0.0.1", title="Host", description="Address the dashboard listens on; 0.0.0.0 shows the"
                       " fleet's state (device ids, versions, rates) to anyone who can reach this machine.")
    port: Port = Field(8090, title="Port", description="The dashboard's HTTP port.")


CLOUD_CONFIG = DocumentKind("cloud config", "broker, workers, store, registry, models", None)  # empty: all defaults


class CloudConfig(FileConfig):
    """What `fedge-cloud serve` runs: broker, workers, where the models are and which to serve."""

    broker: CloudBrokerConfig = Field(default_factory=CloudBrokerConfig, title="Broker",
                                      description="Where workers and coordinator connect.")
    workers: WorkersConfig = Field(default_factory=WorkersConfig, title="Workers",
                                   description="Worker processes and scheduling.")
    store: FilePath | None = Field(None, title="Model store", description="Model store directory (relative to the"
                                   " config file); null uses $FEDGE_STORE or ./store.")
    registry: str | None = Field(None, min_length=1, max_length=4096, title="Registry URL", description="The registry"
                                 " of devices and model states (a SQLite path, sqlite:///path or postgresql://...);"
                                 " null: $FEDGE_REGISTRY or ./var/registry.db. Tasks with active versions there are"
                                 " served at exactly those; others at the store's newest <task>-cloud* models.")
    dashboard: DashboardConfig | None = Field(None, title="Dashboard", description="Serve the operator dashboard"
                                              " (devices, models and rollouts, federated rounds); null: none.")
    models: dict[TaskName, Annotated[list[StoreName], Field(min_length=1)]] | None = Field(
        None, title="Models", description="Task -> the model names to serve (e.g. mnist1d: [mnist1d-cloud]); null"
        " serves every <task>-cloud* model of every task.")


def flag_location(flag: str) -> Location:
    return Location(f"command-line flag {flag}")


def load_cloud_config(path: str | None, overrides: Mapping[str, tuple[DataPath, Any]] | None = None) -> CloudConfig:
    """The config at ``path`` (None: all defaults), with ``overrides`` (flag -> (data path, value)) applied.

    Raises ConfigError listing every problem, at file:line:col or naming the flag.
    """
    document = parse_document(read_text(path, "a config file"), path, CLOUD_CONFIG) if path is not None \
        else Document({}, SourceMap())
    for flag, (data_path, value) in (overrides or {}).items():
        node: dict[Any, Any] = document.data  # a YAML tree: str keys here, list indexes elsewhere in a data path
        for key in data_path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[data_path[-1]] = value
        document.where.replace(data_path, flag_location(flag))
    config = validate_document(document, CloudConfig)
    config._source = Path(path).resolve() if path is not None else None
    return config
