"""`fedge-agent validate` and `fedge-agent schema`: the profile subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from agent.config.problems import ConfigError
from agent.config.reference import update
from agent.exit_codes import ExitCode
from agent.profile.loader import load_profile
from agent.profile.schema import Profile, profile_json_schema


def add_validate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `validate PROFILE...`."""
    parser = commands.add_parser(
        "validate",
        help="check device profiles and report every problem at file:line:col",
        description="Validate device profiles without starting anything (no hardware or"
        " network access). Prints 'ok' per valid file and every problem of the others;"
        f" exits {int(ExitCode.INVALID_INPUT)} if any profile is invalid. FEDGE__SECTION__KEY"
        " environment overrides are applied, as the agent would.",
    )
    parser.add_argument("profiles", nargs="+", metavar="PROFILE", help="profile YAML files")
    parser.add_argument(
        "--no-env",
        action="store_true",
        help="ignore FEDGE__* environment overrides (check the files alone)",
    )
    parser.set_defaults(run=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    """Validate each file; all are checked even after a failure."""
    env = {} if args.no_env else os.environ
    status = ExitCode.OK
    for path in args.profiles:
        try:
            profile = load_profile(path, env)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = ExitCode.INVALID_INPUT
            continue
        print(f"ok  {path}  ({profile.device.kind}, device {profile.device.id})")
    return status


def add_schema(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `schema`."""
    parser = commands.add_parser(
        "schema",
        help="print the profile JSON Schema (for editor completion and checks)",
        description="Print the JSON Schema of device profiles on stdout, e.g. for"
        " yaml-language-server: fedge-agent schema > profile.schema.json, then start a"
        " profile with '# yaml-language-server: $schema=profile.schema.json'. With --reference,"
        " rewrite the generated key reference in a Markdown file instead (docs/PROFILES.md).",
    )
    parser.add_argument("--reference", type=Path, metavar="FILE", default=None,
                        help="rewrite the generated reference block in this Markdown file")
    parser.add_argument("--check", action="store_true",
                        help=f"with --reference: write nothing, exit {int(ExitCode.FAILURE)} if the file is stale")
    parser.set_defaults(run=run_schema)


def run_schema(args: argparse.Namespace) -> int:
    """Print the schema as indented JSON, or update (or check) a reference file."""
    if args.reference is None:
        print(json.dumps(profile_json_schema(), indent=2))
        return ExitCode.OK
    try:
        if update(args.reference, Profile, args.check):
            return ExitCode.OK
    except (OSError, ValueError) as exc:  # ValueError: the file lacks the generated block's markers
        print(f"fedge-agent schema: {args.reference}: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    print(f"{args.reference} is stale: run fedge-agent schema --reference {args.reference}", file=sys.stderr)
    return ExitCode.FAILURE
