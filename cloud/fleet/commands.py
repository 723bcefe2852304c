"""`fedge-cloud acl`, `fedge-cloud devices` and `fedge-cloud listen`: the fleet's subcommands.

Broker users and ACL for a fleet from a devices file; the fleet as the registry
sees it; and the device listener alone, for a registry fed without a coordinator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from agent.command_line import os_error_reason
from agent.config.problems import ConfigError
from agent.exit_codes import ExitCode
from agent.mqtt_client import BrokerConnectError
from agent.protocol import DEFAULT_PREFIX
from cloud.client_ids import client_id
from cloud.fleet.access import load_fleet, write_access_files
from cloud.fleet.devices import DeviceListener
from cloud.options import (
    add_broker_options,
    add_registry_option,
    broker_settings,
    existing_registry_or_exit,
    refused,
)
from cloud.registry import DeviceRecord, RegistryUnavailable, open_registry


def add_acl(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `acl`."""
    parser = commands.add_parser(
        "acl", help="write the Mosquitto password file and ACL for a fleet",
        description="Read a devices file (topic_prefix, devices, workers, coordinators) and write OUT/passwords"
        " (Mosquitto 2 PBKDF2-SHA512 hashes), OUT/acl (each device may publish only its own status, heartbeat and"
        " inference requests and read only its own replies, the manifests and the cloud status; workers read"
        " requests and write replies; coordinators write the cloud status and manifests) and OUT/secrets/<user>"
        " (generated once, mode 0600: provision each to its device as broker.password_file). Re-running keeps"
        " existing secrets. See docs/OPERATIONS.md.",
    )
    parser.add_argument("--devices", required=True, type=Path, help="devices YAML")
    parser.add_argument("--out", type=Path, default=Path("broker-access"), help="output directory (default ./broker-access)")
    parser.set_defaults(run=run_acl)


def run_acl(args: argparse.Namespace) -> int:
    try:
        fleet = load_fleet(args.devices)
    except ConfigError as exc:
        print(f"fedge-cloud acl: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    try:
        files = write_access_files(fleet, args.out)
    except OSError as exc:
        print(f"fedge-cloud acl: cannot write to {args.out}: {os_error_reason(exc)}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    print(f"wrote {files.passwords} and {files.acl} for {len(files.secrets)} users")
    if files.created:
        print(f"new secrets in {args.out / 'secrets'}/: {', '.join(files.created)}")
    print("add to mosquitto.conf:\n"
          f"  allow_anonymous false\n  password_file {files.passwords.resolve()}\n  acl_file {files.acl.resolve()}")
    return ExitCode.OK


def add_devices(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `devices`."""
    parser = commands.add_parser(
        "devices", help="the devices the registry knows: online, model versions, offload rate, p99",
        description="List every device the coordinator has heard from: id, kind and rollout group, online or"
        " offline (their Last Will tells the broker when they die), the model version per task, offload rate,"
        " worst p99 latency over the local and offload paths, and when it was last heard from. The coordinator"
        " (or `python -m cloud.fleet.devices`) fills the registry from heartbeats and status messages.",
    )
    add_registry_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--history", metavar="DEVICE", default=None,
                        help="instead, the device's latest heartbeats and online/offline changes, newest first")
    parser.add_argument("--limit", type=int, default=20, help="history entries to show (default 20)")
    parser.set_defaults(run=run_devices)


def run_devices(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("fedge-cloud devices: --limit must be at least 1", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    registry = existing_registry_or_exit("fedge-cloud devices", args.registry,
                                         " yet: no device has reported to a coordinator using it")
    if isinstance(registry, ExitCode):
        return registry
    with registry:
        if args.history is not None:
            history = registry.device_history(args.history, args.limit)
            if not history:
                print(f"fedge-cloud devices: no history for device {args.history!r}", file=sys.stderr)
                return ExitCode.INVALID_INPUT
            print(json.dumps(history, indent=2) if args.json else "\n".join(map(_history_line, history)))
            return ExitCode.OK
        devices = registry.devices()
    if args.json:
        print(json.dumps([dataclasses.asdict(d) for d in devices], indent=2))
    elif not devices:
        print("no devices have reported yet")
    else:
        print(table(devices, time.time()))
    return ExitCode.OK


def table(devices: list[DeviceRecord], now: float) -> str:
    """One line per device, columns sized to their content."""
    rows = [("device", "kind/group", "online", "models", "offload", "p99 ms", "last seen")]
    for d in devices:
        rows.append((
            d.device_id,
            d.kind if d.group == d.kind else f"{d.kind}/{d.group}",
            "yes" if d.online else "no",
            " ".join(f"{task}:v{version}" for task, version in sorted(d.models.items())) or "-",
            "-" if d.offload_rate is None else f"{d.offload_rate:.1%}",
            "-" if d.p99_ms is None else f"{d.p99_ms:.1f}",
            ago(now - d.last_seen),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def ago(seconds: float) -> str:
    """``3s ago``, ``5m ago``, ``2h ago``, ``4d ago``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _history_line(entry: dict[str, object]) -> str:
    when = datetime.fromtimestamp(float(entry["at"])).isoformat(timespec="seconds")  # type: ignore[arg-type]
    data = entry["data"]
    return f"{when}  {entry['event']:<9}  {json.dumps(data) if data else ''}".rstrip()


def add_listen(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `listen`."""
    parser = commands.add_parser(
        "listen", help="run the device listener alone: heartbeats and status into the registry",
        description="Subscribe to every device's heartbeat and status (with its Last Will) and write them to the"
        " registry until SIGTERM or SIGINT, as fedge-cloud serve does in-process. For a registry (e.g. PostgreSQL)"
        " fed on a machine that runs no workers, or a rollout without serve running.",
    )
    add_broker_options(parser)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    add_registry_option(parser)
    parser.set_defaults(run=run_listen)


def run_listen(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        broker = broker_settings(args)
        registry = open_registry(args.registry)
    except (ValueError, RegistryUnavailable) as exc:
        return refused("fedge-cloud listen", exc)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with registry, DeviceListener(registry, broker, args.prefix, client_id=client_id("fedge-devices")):
            print(f"fedge-cloud listen: listening on {args.broker} for {args.prefix}/device/+/...", flush=True)
            stop.wait()
    except BrokerConnectError as exc:
        print(f"fedge-cloud listen: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    return ExitCode.OK
