"""`fedge-cloud serve`: flags and config file to worker settings, then the coordinator until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from agent.config.problems import ConfigError
from agent.config.yaml_source import DataPath
from agent.exit_codes import ExitCode
from agent.manifest import ManifestError
from agent.model_store import ModelStore
from agent.mqtt_client import BrokerConnectError, BrokerSettings, TlsFiles
from cloud.client_ids import instance_name
from cloud.dashboard.server import DashboardUnavailable
from cloud.options import add_store_option
from cloud.registry.base import RegistryUnavailable
from cloud.registry.open import default_registry, existing_registry
from cloud.serving.config import CloudConfig, load_cloud_config
from cloud.serving.coordinator import Coordinator
from cloud.serving.served import require_served
from cloud.serving.worker import WorkerSettings
from cloud.store import default_store_root

#: flag -> where its value goes in the config (flags override the file).
FLAG_PATHS: dict[str, DataPath] = {
    "--workers": ("workers", "count"),
    "--share-group": ("workers", "share_group"),
    "--max-batch": ("workers", "max_batch"),
    "--max-delay-ms": ("workers", "max_delay_ms"),
    "--max-queue": ("workers", "max_queue"),
    "--threads": ("workers", "threads"),
    "--prefix": ("broker", "topic_prefix"),
    "--registry": ("registry",),
    "--dashboard": ("dashboard", "port"),
}


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `serve`."""
    parser = commands.add_parser(
        "serve", help="serve the store's cloud models to agents over MQTT v5",
        description="Start N worker processes on the shared subscription $share/<group>/<prefix>/infer/+ (more"
        " workers, on more machines, add capacity) and publish the retained cloud status agents read before"
        " offloading (health, workers alive, per-task queue depth and p50/p99). Each worker serves every"
        " <task>-cloud* model (e.g. mnist1d-cloud and mnist1d-cloud-small; where the registry has active versions,"
        " exactly those):"
        " a request naming a model (fedge-model) gets it; otherwise the most accurate model whose expected"
        " latency (queue ahead + its measured run time) fits the request's deadline, else the fastest. A request"
        " carrying edge_probs and a fusion weight gets the fused distribution. Workers order requests by priority"
        " then deadline, batch per model, answer 'expired' without running what is late and shed the lowest"
        " priorities with 'overloaded' when full. Settings come from --config (see docs/cloud.example.yaml);"
        " flags override it. Serve hosts sharing a broker each publish the status of all their workers together."
        " SIGTERM or SIGINT stops everything; the cloud status turns unhealthy unless another serve host's"
        " workers are still reporting."
        f" Exit codes: {int(ExitCode.INVALID_INPUT)} bad config or flags, {int(ExitCode.UNAVAILABLE)} broker or"
        " registry unreachable or refused.",
    )
    parser.add_argument("--config", metavar="FILE", help="serve config YAML (broker, credentials, TLS, workers,"
                        " store, registry, models); errors are reported at file:line:col")
    parser.add_argument("--validate", action="store_true", help=f"check the config and flags, print a summary and"
                        f" exit: 0 if valid, {int(ExitCode.INVALID_INPUT)} if not; starts nothing")
    parser.add_argument("--broker", metavar="URL", help="broker URL, mqtt://host:port or mqtts://host:port (default"
                        " from the config, else mqtt://localhost:1883)")
    parser.add_argument("--workers", type=int, help="worker processes (default 2)")
    parser.add_argument("--prefix", help="topic prefix (default fedge/v1)")
    parser.add_argument("--share-group", help="shared-subscription group of the workers (default workers)")
    parser.add_argument("--max-batch", type=int, help="largest batch per model run (default 32)")
    parser.add_argument("--max-delay-ms", type=float, help="how long a batch waits to fill (default 2)")
    parser.add_argument("--max-queue", type=int, help="requests a worker holds before shedding (default 256)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads per worker (default 1)")
    parser.add_argument("--registry", metavar="URL", help="the registry of devices (fed by their heartbeats and"
                        " Last Will) and model states: a SQLite path, sqlite:///path or postgresql://... (default"
                        " $FEDGE_REGISTRY or ./var/registry.db); tasks with active versions there serve exactly those")
    parser.add_argument("--dashboard", type=int, metavar="PORT", help="serve the operator dashboard on"
                        " http://127.0.0.1:PORT/ (read-only: devices, models and rollouts, federated rounds, from the"
                        " registry; config dashboard.host to listen elsewhere)")
    add_store_option(parser)
    parser.set_defaults(run=run_serve)


def overrides(args: argparse.Namespace) -> dict[str, tuple[DataPath, Any]]:
    """The flags given, as config overrides."""
    given = {}
    for flag, path in FLAG_PATHS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            given[flag] = (path, value)
    return given


def build_settings(config: CloudConfig, args: argparse.Namespace) -> tuple[WorkerSettings, str | None, str | None]:
    """Worker settings, and the coordinator's username and password; raises ValueError or ConfigError."""
    b, w = config.broker, config.workers
    tls = None if b.tls is None else TlsFiles.from_config(b.tls, config.resolve_path)
    broker = BrokerSettings(b.host, b.port, tls, b.username, b.password("broker", config.resolve_path), b.keepalive_s)
    if args.broker is not None:
        broker = BrokerSettings.from_url(args.broker, broker)
    settings = WorkerSettings(
        store=store_root(config, args), broker=broker, worker_id=instance_name(), topic_prefix=b.topic_prefix,
        share_group=w.share_group, max_batch=w.max_batch, max_delay_ms=w.max_delay_ms, max_queue=w.max_queue,
        threads=w.threads, status_interval_s=w.status_interval_s,
        registry_url=config.registry or default_registry(),
        models={task: list(names) for task, names in config.models.items()} if config.models else None)
    coordinator = b.coordinator
    if coordinator is None:
        return settings, None, None
    return settings, coordinator.username, coordinator.password("broker.coordinator", config.resolve_path)


def store_root(config: CloudConfig, args: argparse.Namespace) -> Path:
    """--store, else the config's store (relative to the config file), else $FEDGE_STORE or ./store."""
    return Path(args.store or (config.resolve_path(config.store) if config.store else default_store_root()))


def _fail(problem: object) -> int:
    print(f"fedge-cloud serve: {problem}", file=sys.stderr)
    return ExitCode.INVALID_INPUT


def _say_what_would_be_served(store: Path, registry_url: str, config: CloudConfig) -> None:
    """The versions serve would start with: the registry's active ones where it has them, else the newest.

    A config may be checked where the models or the registry are not (CI): that is said, and it stays valid.
    The registry is only read: checking a config creates no database.
    """
    try:
        registry = existing_registry(registry_url)
        try:
            served = require_served(ModelStore(store), registry, config.models)
        finally:
            if registry is not None:
                registry.close()
    except (LookupError, ManifestError, OSError, ValueError, RegistryUnavailable) as exc:
        print(f"store {store}: serve would not start: {exc}", file=sys.stderr)
        return
    named = [f"{m.manifest.name} v{m.manifest.version}" for versions in served.values() for m in versions]
    print(f"store {store}: {', '.join(named)}")


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_cloud_config(args.config, overrides(args))
        if args.broker is not None:
            BrokerSettings.from_url(args.broker)
    except ConfigError as exc:
        return _fail("invalid settings:\n" + "\n".join(f"  {p}" for p in exc.problems))
    except ValueError as exc:
        return _fail(exc)
    if args.validate:
        store = store_root(config, args)
        w = config.workers
        broker = args.broker or f"{config.broker.host}:{config.broker.port}"
        print(f"{args.config or '(no config file)'}: ok: broker {broker}, {w.count} workers, max batch"
              f" {w.max_batch}, store {store}")
        _say_what_would_be_served(store, config.registry or default_registry(), config)
        return ExitCode.OK
    try:
        template, username, password = build_settings(config, args)
        coordinator = Coordinator(template, config.workers.count, config.workers.status_interval_s,
                                  username=username, password=password,
                                  dashboard=None if config.dashboard is None else (config.dashboard.host,
                                                                                   config.dashboard.port))
    except ConfigError as exc:
        return _fail("\n".join(str(p) for p in exc.problems))
    except (ValueError, LookupError, ManifestError) as exc:
        return _fail(exc)
    except (RegistryUnavailable, DashboardUnavailable) as exc:
        print(f"fedge-cloud serve: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: coordinator.stop())
    print(f"fedge-cloud serve: starting {config.workers.count} workers on {template.broker.address}",
          flush=True)
    try:
        coordinator.run()
    except BrokerConnectError as exc:
        print(f"fedge-cloud serve: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    return ExitCode.OK
