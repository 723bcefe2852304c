"""`fedge-cloud models publish` (sign a version) and `fedge-cloud rollout` (canary, then group or back)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.durable import replace_file
from agent.exit_codes import ExitCode
from agent.manifest import MANIFEST_FILE, ManifestError
from agent.model_store import ModelStore, StoredModel
from agent.mqtt_client import BrokerConnectError
from agent.protocol import Topics
from agent.signing import KeyFileError
from cloud.broker_options import add_broker_options, broker_connection
from cloud.keys import (
    PRIVATE_FILE,
    default_key_dir,
    load_private_key,
    sign,
)
from cloud.registry import ModelState, RegistryUnavailable, open_registry
from cloud.registry.open import add_registry_option
from cloud.release_channel import ReleaseChannel
from cloud.rollout import Rollout, RolloutError, RolloutPlan, summary
from cloud.zoo.commands import add_store_option, store_of


def sign_stored(store: ModelStore, task: str, name: str, version: int | None,
                key: Ed25519PrivateKey | Path) -> StoredModel:
    """Sign a stored version's manifest in place with ``key`` (or the key in that file).

    The signed manifest is written whole to a temp file, fsynced and renamed over the old one,
    so a crash leaves the old manifest or the new one, never a torn one.
    """
    stored = store.verified(task, name, version)
    signed = sign(stored.manifest, key if isinstance(key, Ed25519PrivateKey) else load_private_key(key))
    target = stored.directory / MANIFEST_FILE
    replace_file(target, signed.to_json().encode())
    return StoredModel(signed, stored.directory)


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
        broker = broker_connection(args)
        with open_registry(args.registry) as registry, \
                ReleaseChannel(broker.host, broker.port, Topics(args.prefix), tls=broker.tls,
                               username=broker.username, password=broker.password) as channel:
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
