"""`fedge-cloud acl`: broker users and ACL for a fleet, from a devices file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.command_line import os_error_reason
from agent.exit_codes import ExitCode
from cloud.access import FleetError, load_fleet, write_access_files


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
    except FleetError as exc:
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
