"""`fedge-cloud devices`: the fleet as the registry sees it, or one device's history."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import datetime

from agent.exit_codes import ExitCode
from cloud.registry import DeviceRecord, RegistryUnavailable, default_registry, existing_registry
from cloud.registry.open import add_registry_option


def add_devices(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `devices`."""
    parser = commands.add_parser(
        "devices", help="the devices the registry knows: online, model versions, offload rate, p99",
        description="List every device the coordinator has heard from: id, kind and rollout group, online or"
        " offline (their Last Will tells the broker when they die), the model version per task, offload rate,"
        " worst p99 latency over the local and offload paths, and when it was last heard from. The coordinator"
        " (or `python -m cloud.devices`) fills the registry from heartbeats and status messages.",
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
    try:
        registry = existing_registry(args.registry)
    except ValueError as exc:
        print(f"fedge-cloud devices: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except RegistryUnavailable as exc:
        print(f"fedge-cloud devices: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    if registry is None:
        print(f"fedge-cloud devices: no registry at {args.registry or default_registry()} yet: no device has"
              " reported to a coordinator using it", file=sys.stderr)
        return ExitCode.UNAVAILABLE
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
