"""`fedge-cloud serve`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from agent.exit_codes import ExitCode
from agent.manifest import ManifestError
from agent.mqtt_client import BrokerAddress, BrokerConnectError
from cloud.serving.coordinator import Coordinator
from cloud.serving.worker import WorkerSettings
from cloud.store import default_store_root
from cloud.zoo.commands import add_store_option


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `serve`."""
    parser = commands.add_parser(
        "serve", help="serve the store's cloud models to agents over MQTT v5",
        description="Start N worker processes on the shared subscription $share/<group>/<prefix>/infer/+ (more"
        " workers, on more machines, add capacity) serving every task's newest <task>-cloud model, and publish the"
        " retained cloud status agents read before offloading. Workers order requests by priority then deadline,"
        " batch per model, answer 'expired' without running what is late and shed the lowest priorities with"
        " 'overloaded' when full. SIGTERM or SIGINT stops everything and marks the cloud unhealthy.",
    )
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL (default mqtt://127.0.0.1:1883)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--prefix", default="fedge/v1", help="topic prefix (default fedge/v1)")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch per model run (default 32)")
    parser.add_argument("--max-queue", type=int, default=256, help="requests a worker holds before shedding")
    add_store_option(parser)
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers < 1 or args.max_batch < 1 or args.max_queue < 1:
        print("fedge-cloud serve: --workers, --max-batch and --max-queue must be at least 1", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    try:
        address = BrokerAddress.parse(args.broker)
        template = WorkerSettings(store=args.store or default_store_root(), host=address.host, port=address.port,
                                  worker_id="worker", topic_prefix=args.prefix, max_batch=args.max_batch,
                                  max_queue=args.max_queue)
        coordinator = Coordinator(template, args.workers)
    except (ValueError, LookupError, ManifestError) as exc:
        print(f"fedge-cloud serve: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: coordinator.stop())
    print(f"fedge-cloud serve: {args.workers} workers on {args.broker} (pids {coordinator.worker_pids})", flush=True)
    try:
        coordinator.run()
    except BrokerConnectError as exc:
        coordinator.stop()
        print(f"fedge-cloud serve: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    return ExitCode.OK
