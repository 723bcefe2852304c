"""`fedge-agent run` (the daemon) and `fedge-agent infer` (one request from a shell)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import numpy as np

from agent.agent import Agent
from agent.exit_codes import ExitCode
from agent.manifest import ManifestError
from agent.mqtt_client import BrokerAddress
from agent.offload import BrokerSettings
from agent.profile import ProfileError, load_profile
from agent.profile.schema import Profile
from agent.protocol import InferRequest, ProtocolError, decode_request
from agent.protocol.oip import reply_document

log = logging.getLogger("fedge.agent")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", required=True, type=Path, help="device profile YAML (see edge_profiles/)")
    parser.add_argument("--broker", help="override the profile's broker: mqtt://host:port or mqtts://host:port")
    parser.add_argument("--store", type=Path, help="model store directory (default: <storage.directory>/models)")


def add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `run`."""
    parser = commands.add_parser(
        "run", help="run the agent daemon",
        description="Load and verify the profile's models, connect to the broker (in the background: the agent"
        " answers locally until it is reachable), serve the local HTTP API (KServe OIP v2 + /metrics) and send"
        " heartbeats. SIGTERM or SIGINT: stop taking requests, answer what is queued, publish offline, exit 0."
        " Flags override the profile, as do FEDGE__SECTION__KEY environment variables.",
    )
    _common(parser)
    parser.add_argument("--api-port", type=int, help="override api.port (0 picks a free port)")
    parser.set_defaults(run=run_daemon)


def add_infer(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `infer`."""
    parser = commands.add_parser(
        "infer", help="answer one request from a file, as the daemon would",
        description="Start the agent in-process without its HTTP API, answer one request and print the answer"
        " (OIP v2 JSON with source, degraded flag and timings). INPUT is a .npy array or a .json file holding an"
        " OIP v2 request body or a plain (nested) list of numbers.",
    )
    _common(parser)
    parser.add_argument("--task", required=True, help="task to ask, e.g. mnist1d")
    parser.add_argument("--input", required=True, type=Path, help="input.npy or input.json")
    parser.add_argument("--timeout-ms", type=int, default=None, help="deadline (default: the profile's)")
    parser.set_defaults(run=run_infer)


def _setup_logging(profile: Profile) -> None:
    fmt = ('{"t":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
           if profile.logging.format == "json" else "%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=profile.logging.level, format=fmt, stream=sys.stderr)


def _agent(args: argparse.Namespace, profile: Profile, api_port: int | None = None) -> Agent:
    broker = None
    if args.broker:
        address = BrokerAddress.parse(args.broker)
        base = Agent.broker_settings(profile)
        broker = BrokerSettings(address.host, address.port, base.tls, base.username, base.password, base.keepalive_s)
    return Agent(profile, store_root=args.store, broker=broker, api_port=api_port)


def _load(path: Path) -> Profile | None:
    try:
        return load_profile(str(path))
    except ProfileError as exc:
        print(exc, file=sys.stderr)
        return None


def run_daemon(args: argparse.Namespace) -> int:
    profile = _load(args.profile)
    if profile is None:
        return ExitCode.INVALID_INPUT
    _setup_logging(profile)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: draining and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent = _agent(args, profile, args.api_port).start()
    except (ManifestError, ProfileError, ValueError, OSError) as exc:
        print(f"fedge-agent run: cannot start: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    where = f"http://{profile.api.host}:{agent.api.port}" if agent.api else "no HTTP API"
    print(f"fedge-agent {profile.device.id} ready: {where}, tasks {', '.join(profile.models)}", flush=True)
    stop.wait()
    agent.stop()
    return ExitCode.OK


def _read_input(task: str, path: Path) -> InferRequest:
    if path.suffix == ".npy":
        return InferRequest(task, {"input": np.load(path, allow_pickle=False)})
    doc = json.loads(path.read_text())
    if isinstance(doc, dict):
        return decode_request(task, json.dumps(doc).encode(), None)
    return InferRequest(task, {"input": np.asarray(doc, dtype=np.float32)})


def run_infer(args: argparse.Namespace) -> int:
    profile = _load(args.profile)
    if profile is None:
        return ExitCode.INVALID_INPUT
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet = profile.model_copy(update={"api": profile.api.model_copy(update={"enabled": False})})
    try:
        request = _read_input(args.task, args.input)
        if args.timeout_ms is not None:
            request = InferRequest(request.task, request.inputs, request.request_id, request.priority, args.timeout_ms)
        with _agent(args, quiet) as agent:
            if agent.offload is not None:
                agent.offload.wait_connected(2.0)  # a one-shot call gives the broker a moment
            reply = agent.infer(request)
    except (OSError, ValueError, ManifestError, ProtocolError) as exc:
        print(f"fedge-agent infer: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    print(json.dumps(reply_document(reply), indent=2))
    return ExitCode.OK
