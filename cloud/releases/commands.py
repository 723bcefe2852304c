"""`fedge-cloud keys init`, `fedge-cloud models publish` (sign a version) and `fedge-cloud rollout`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from agent.command_line import os_error_reason, print_help_of
from agent.exit_codes import ExitCode
from agent.manifest import ManifestError
from agent.mqtt_client import BrokerConnectError
from agent.protocol import Topics
from agent.signing import KeyFileError
from cloud.options import add_broker_options, add_registry_option, add_store_option, broker_settings, store_of
from cloud.registry import ModelState, RegistryUnavailable, open_registry
from cloud.releases.channel import ReleaseChannel
from cloud.releases.keys import PRIVATE_FILE, PUBLIC_FILE, default_key_dir, init_keys, load_private_key
from cloud.releases.rollout import Rollout, RolloutError, RolloutPlan, summary
from cloud.releases.signing import sign_stored


def _key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, default=None,
                        help=f"private signing key (default: $FEDGE_KEYS/{PRIVATE_FILE} or keys/{PRIVATE_FILE})")


def _key_file(args: argparse.Namespace) -> Path:
    return args.key or default_key_dir() / PRIVATE_FILE


def add_publish(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `models publish`."""
    parser = actions.add_parser(
        "publish", help="sign a model version so agents will install it",
        description="Sign the manifest of a store version with the release key (Ed25519) and register it as"
        " staged. With --onnx the file is first added to the store as the next version of TASK/NAME."
        " Agents refuse anything unsigned; roll a signed version out with fedge-cloud rollout.",
    )
    parser.add_argument("--task", required=True, help="task, e.g. mnist1d")
    parser.add_argument("--name", required=True, help="model name, e.g. mnist1d-edge")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--version", type=int, default=None, help="version to sign (default: the newest)")
    source.add_argument("--onnx", type=Path, default=None, help="add this ONNX file as the next version, then sign")
    _key_option(parser)
    add_store_option(parser)
    add_registry_option(parser)
    parser.set_defaults(run=run_publish)


def run_publish(args: argparse.Namespace) -> int:
    store = store_of(args)
    try:
        key = load_private_key(_key_file(args))  # before anything is stored: no key, no new version
        version = args.version
        if args.onnx is not None:
            from cloud.store import publish  # torch loads only when a file is added

            if not args.onnx.is_file():
                raise ManifestError(f"{args.onnx}: no such ONNX file")
            version = publish(store, args.task, args.name, args.onnx, metrics={}).manifest.version
        stored = sign_stored(store, args.task, args.name, version, key)
        with open_registry(args.registry) as registry:
            registry.add_model(args.task, args.name, stored.manifest.version, ModelState.STAGED,
                               stored.manifest.metrics)
    except (ManifestError, KeyFileError, ValueError) as exc:
        print(f"fedge-cloud models publish: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except RegistryUnavailable as exc:
        print(f"fedge-cloud models publish: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    m = stored.manifest
    print(f"signed {m.task}/{m.name} v{m.version} (sha256 {m.sha256[:12]}…); roll it out with:"
          f" fedge-cloud rollout --task {m.task} --name {m.name} --version {m.version} --canary 10%")
    return ExitCode.OK


def parse_fraction(text: str) -> float:
    """``10%`` or ``0.1`` -> 0.1, in (0, 1]."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: write e.g. 10% or 0.1") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0% and at most 100%")
    return value


def add_rollout(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `rollout`."""
    parser = commands.add_parser(
        "rollout", help="release a signed model version to a device group, canary first",
        description="Publish a signed release (retained) to a canary share of a device group's online devices"
        " (as the registry knows them from heartbeats) and the model file on its artifact topic. Each canary"
        " agent verifies, shadow-evaluates and reports in its heartbeat. All canaries serving the version:"
        " the release goes to the whole group and the version becomes active. A refusal or no report in"
        " time: a signed rollback to the previous version (the active one, else the newest older one the"
        " group runs) goes to the group and the version is retired. That rollback is checked and signed"
        " before the canary starts: with no signed earlier version the rollout refuses to start (exit 2)"
        " unless --first-release says there is none. Ctrl-C while waiting undoes the canary the same way"
        " (a second Ctrl-C is ignored until the undo is out)."
        f" Exit 0 when promoted, 1 when rolled back or withdrawn, {int(ExitCode.INTERRUPTED)} when interrupted.",
    )
    parser.add_argument("--task", required=True, help="task, e.g. mnist1d")
    parser.add_argument("--version", type=int, required=True, help="signed store version to release")
    parser.add_argument("--name", default=None, help="model name (default: TASK-edge)")
    parser.add_argument("--group", default="default", help="device group (the profiles' updates.group)")
    parser.add_argument("--canary", type=parse_fraction, default=0.1, help="share of the group first (default 10%%)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for canary reports (default 120)")
    parser.add_argument("--first-release", action="store_true",
                        help="there is no earlier signed version to roll back to: if the canary fails, the release"
                        " is withdrawn, but canaries that installed it keep it (nothing older to go back to)")
    add_broker_options(parser)
    parser.add_argument("--prefix", default="fedge/v1", help="topic prefix (default fedge/v1)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    _key_option(parser)
    add_store_option(parser)
    add_registry_option(parser)
    parser.set_defaults(run=run_rollout)


def run_rollout(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = RolloutPlan(args.task, args.name or f"{args.task}-edge", args.version, args.group, args.canary,
                       args.timeout, args.first_release)
    try:
        key = load_private_key(_key_file(args))
        broker = broker_settings(args)
        with open_registry(args.registry) as registry, ReleaseChannel(broker, Topics(args.prefix)) as channel:
            result = Rollout(store_of(args), registry, channel, key).run(plan)
    except (RolloutError, KeyFileError, ManifestError, ValueError) as exc:
        print(f"fedge-cloud rollout: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except (RegistryUnavailable, BrokerConnectError, ConnectionError) as exc:
        print(f"fedge-cloud rollout: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    if args.json:
        print(json.dumps(summary(result, plan), indent=2))
    else:
        print(f"{plan.task}/{plan.name} v{plan.version}: {result.outcome} ({result.reason})")
    if result.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.OK if result.outcome == "promoted" else ExitCode.FAILURE


def add_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `keys` (with `init`)."""
    parser = commands.add_parser("keys", help="the Ed25519 key that signs model releases",
                                 description="Manage the release signing key.")
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    init = actions.add_parser(
        "init", help="create the release signing key pair",
        description=f"Write {PRIVATE_FILE} (Ed25519, mode 0600, keep it on the coordinator only) and"
        f" {PUBLIC_FILE} (copy it to every device; profiles name it in updates.public_key_file)."
        " An existing pair is never overwritten without --force.",
    )
    init.add_argument("--dir", type=Path, default=None, help="key directory (default: $FEDGE_KEYS or ./keys)")
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    init.set_defaults(run=run_keys_init)
    parser.set_defaults(run=print_help_of(parser))


def run_keys_init(args: argparse.Namespace) -> int:
    try:
        private, public = init_keys(args.dir or default_key_dir(), force=args.force)
    except FileExistsError as exc:
        print(f"fedge-cloud keys init: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except OSError as exc:  # a directory that cannot be made or written: the user's to fix, like any bad path
        print(f"fedge-cloud keys init: cannot write the key pair: {os_error_reason(exc)}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    print(f"private key {private} (keep it secret), public key {public} (copy it to every device)")
    return ExitCode.OK
