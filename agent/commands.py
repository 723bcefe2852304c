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
from agent.log_format import JsonFormatter
from agent.manifest import ManifestError
from agent.mqtt_client import BrokerSettings
from agent.profile import ConfigError, load_profile
from agent.profile.schema import Profile
from agent.protocol import InferRequest, ProtocolError, decode_request, oip
from agent.protocol.oip import reply_document
from agent.uplink import Uplink

log = logging.getLogger("fedge.agent")
# How long `infer` gives the broker to accept it, then the cloud's retained status to arrive (one more
# round trip): a one-shot command has no earlier requests to bridge that window.
CONNECT_WAIT_S, CLOUD_STATUS_WAIT_S = 2.0, 1.0
NPY_MAGIC = b"\x93NUMPY"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", required=True, type=Path, help="device profile YAML (see edge_profiles/)")
    parser.add_argument("--broker", help="override the profile's broker: mqtt://host:port (plain) or"
                        " mqtts://host:port (TLS: the profile's tls files, else the system's CAs)")
    parser.add_argument("--store", type=Path, help="model store directory (default: <storage.directory>/models)")


def add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `run`."""
    parser = commands.add_parser(
        "run", help="run the agent daemon",
        description="Load and verify the profile's models, connect to the broker (in the background: the agent"
        " answers locally until it is reachable and the cloud's retained status has arrived, normally within"
        " milliseconds), serve the local HTTP API (KServe OIP v2 + /metrics) and send heartbeats. SIGTERM or"
        " SIGINT: stop taking requests, answer what is queued, publish offline, exit 0. Flags override the"
        " profile, as do FEDGE__SECTION__KEY environment variables.",
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
        " OIP v2 request body or a plain (nested) list of numbers. When the task may offload, the agent first"
        f" waits up to {CONNECT_WAIT_S:g} s for the broker and {CLOUD_STATUS_WAIT_S:g} s for the cloud's status;"
        " without them an unsure answer stays local and stderr says why.",
    )
    _common(parser)
    parser.add_argument("--task", required=True, help="task to ask, e.g. mnist1d")
    parser.add_argument("--input", required=True, type=Path, help="input.npy or input.json")
    parser.add_argument("--timeout-ms", type=_positive_int, default=None, metavar="MS",
                        help="deadline in milliseconds, at least 1 (default: the profile's)")
    parser.set_defaults(run=run_infer)


def _positive_int(text: str) -> int:
    """argparse type of ``--timeout-ms``: a deadline of zero or less has passed before the request starts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: give at least 1 (milliseconds)")
    return value


def _setup_logging(profile: Profile) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if profile.logging.format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=profile.logging.level, handlers=[handler])


def _agent(args: argparse.Namespace, profile: Profile, api_port: int | None = None) -> Agent:
    """The agent the profile and flags describe; ``--broker``'s scheme decides TLS (mqtts:// on, mqtt:// off)."""
    broker = BrokerSettings.from_url(args.broker, Agent.broker_settings(profile)) if args.broker else None
    return Agent(profile, store_root=args.store, broker=broker, api_port=api_port)


def _load(path: Path) -> Profile | None:
    try:
        return load_profile(str(path))
    except ConfigError as exc:
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
    except (ManifestError, ConfigError, ValueError, OSError) as exc:
        print(f"fedge-agent run: cannot start: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    where = f"http://{profile.api.host}:{agent.api.port}" if agent.api else "no HTTP API"
    print(f"fedge-agent {profile.device.id} ready: {where}, tasks {', '.join(profile.models)}", flush=True)
    stop.wait()
    agent.stop()
    return ExitCode.OK


def _read_npy(path: Path) -> np.ndarray:
    with path.open("rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:  # numpy would call it "pickled data"
            raise ValueError(f"{path}: not a NumPy .npy file (it lacks the .npy header)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy array: {exc}") from None


def _shape(doc: object) -> tuple[int, ...] | None:
    """The shape of a nested list, None when ragged (sibling lists of different lengths or depths)."""
    if not isinstance(doc, list):
        return ()
    shapes = {_shape(item) for item in doc}
    if len(shapes) > 1:
        return None
    inner = shapes.pop() if shapes else ()
    return None if inner is None else (len(doc), *inner)


def _read_json(task: str, path: Path) -> InferRequest:
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(doc, dict):
        return decode_request(task, json.dumps(doc).encode(), None)
    if _shape(doc) is None:
        raise ValueError(f"{path}: a ragged list: its nested lists differ in length, and an input must be rectangular")
    try:
        return InferRequest(task, {"input": np.asarray(doc, dtype=np.float32)})
    except (ValueError, TypeError):
        raise ValueError(f"{path}: holds something other than numbers (an input is a nested list of numbers)") from None


def _read_input(task: str, path: Path) -> InferRequest:
    """The request in ``path``; ValueError naming the file and what is wrong with it."""
    return InferRequest(task, {"input": _read_npy(path)}) if path.suffix == ".npy" else _read_json(task, path)


def _why_local(uplink: Uplink) -> str | None:
    """Wait briefly for the broker and the cloud's status; why offloading is off, or None when it is on."""
    where = uplink.broker.address
    if not uplink.wait_connected(CONNECT_WAIT_S):
        return f"no connection to the MQTT broker at {where} within {CONNECT_WAIT_S:g} s"
    status = uplink.wait_cloud_status(CLOUD_STATUS_WAIT_S)
    if status is None:
        return (f"no cloud status on {uplink.topics.cloud_status} within {CLOUD_STATUS_WAIT_S:g} s"
                " (is fedge-cloud serve running on this broker?)")
    return "the cloud reports itself overloaded" if status.overloaded else None


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
            why = _why_local(agent.uplink) if agent.uplink is not None and args.task in profile.offload else None
            if why is not None:
                print(f"fedge-agent infer: not offloading: {why}; an unsure answer stays local", file=sys.stderr)
            reply = agent.infer(request)
    except (ManifestError, ConfigError) as exc:
        print(f"fedge-agent infer: cannot start: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except (OSError, ValueError, ProtocolError) as exc:
        print(f"fedge-agent infer: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    print(oip.dumps(reply_document(reply), indent=True).decode())
    return ExitCode.OK
