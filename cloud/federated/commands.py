"""`fedge-cloud fl serve|simulate|status`: federated fine-tuning's subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from agent.command_line import os_error_reason, print_help_of
from agent.config.problems import ConfigError
from agent.exit_codes import ExitCode
from agent.federated.processes import MissingFlower
from agent.manifest import ManifestError
from agent.mqtt_client import BrokerConnectError
from agent.protocol import DEFAULT_PREFIX, Topics
from cloud.dashboard.server import DashboardUnavailable
from cloud.federated.settings import STRATEGIES, FederatedSettings
from cloud.federated.table import HEADER, row, table
from cloud.options import (
    add_broker_options,
    add_registry_option,
    add_store_option,
    broker_settings,
    existing_registry_or_exit,
    store_of,
)
from cloud.registry import RegistryUnavailable, RoundRecord, default_registry
from cloud.zoo.tasks import TASKS, get_task
from cloud.zoo.user_tasks import pin_tasks_dir

DEFAULT_STATE = Path("var/federated")


def add_fl(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `fl` with `serve`, `simulate` and `status`."""
    parser = commands.add_parser("fl", help="federated fine-tuning of the edge model with Flower",
                                 description="Fine-tune the edge model on what the devices kept (offloaded and audited"
                                 " inputs with the cloud's answers, users' labels), with Flower; only weights leave"
                                 " the devices. Every K rounds the aggregate is compressed, signed and rolled out.")
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    _add_serve(actions)
    _add_simulate(actions)
    _add_status(actions)
    _add_node_key(actions)
    _add_loop(actions)
    parser.set_defaults(run=print_help_of(parser))


def _add_round_options(parser: argparse.ArgumentParser) -> None:
    d = FederatedSettings()
    parser.add_argument("--task", default=d.task, help=f"task (default {d.task}; {', '.join(TASKS)} or a task of your"
                        " own, tasks/<name>.yaml)")
    parser.add_argument("--model", default="", help="edge model to fine-tune (default: TASK-edge)")
    parser.add_argument("--rounds", type=int, default=d.rounds, help=f"rounds (default {d.rounds})")
    parser.add_argument("--rounds-per-release", type=int, default=d.rounds_per_release, metavar="K",
                        help="compress, sign and roll out the aggregate every K rounds (default 0: never)")
    parser.add_argument("--min-nodes", type=int, default=d.min_nodes,
                        help=f"devices a round needs; fewer online within the round timeout skips it"
                        f" (default {d.min_nodes})")
    parser.add_argument("--fraction", type=float, default=d.fraction,
                        help=f"share of the online devices sampled per round (default {d.fraction:g})")
    parser.add_argument("--round-timeout", type=float, default=d.round_timeout_s, metavar="S",
                        help=f"seconds a round waits for devices and replies (default {d.round_timeout_s:g})")
    parser.add_argument("--strategy", choices=STRATEGIES, default=d.strategy, help="aggregation (default fedavg)")
    parser.add_argument("--mu", type=float, default=d.proximal_mu, help="fedprox: proximal weight mu")
    parser.add_argument("--server-momentum", type=float, default=d.server_momentum,
                        help=f"fedavgm: server momentum (default {d.server_momentum:g})")
    parser.add_argument("--server-lr", type=float, default=d.server_learning_rate,
                        help=f"fedavgm: server learning rate (default {d.server_learning_rate:g})")
    parser.add_argument("--trim", type=float, default=d.trim_beta, help="trimmed-mean: share cut from each end")
    parser.add_argument("--krum-malicious", type=int, default=d.krum_malicious,
                        help="krum: devices assumed malicious")
    parser.add_argument("--local-epochs", type=int, default=d.local_epochs,
                        help="epochs per round on every device (default 0: each device's federated.local_epochs)")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate,
                        help=f"devices' learning rate (default {d.learning_rate:g})")
    parser.add_argument("--temperature", type=float, default=d.temperature,
                        help=f"distillation temperature (default {d.temperature:g})")
    parser.add_argument("--distill-weight", type=float, default=d.distill_weight,
                        help=f"share of the loss on the cloud's soft labels (default {d.distill_weight:g})")
    parser.add_argument("--dp-noise", type=float, default=d.dp_noise,
                        help="client-side DP with fixed clipping: the noise multiplier (default 0: off)")
    parser.add_argument("--dp-clip", type=float, default=d.dp_clip, help="DP: clipping norm of an update")
    parser.add_argument("--max-accuracy-drop", type=float, default=d.max_accuracy_drop,
                        help="points a release's quantization may lose against the fp32 aggregate (validation rows)")
    parser.add_argument("--run", dest="run_id", default="", metavar="RUN",
                        help="fedge run id (default: a new one); an unfinished run resumes")
    add_store_option(parser)
    add_registry_option(parser)


def _settings(args: argparse.Namespace, **more: object) -> FederatedSettings:
    """The run's settings from its options; ValueError naming the problem (a task that is not there, too)."""
    try:
        get_task(args.task)
    except ConfigError as exc:  # a user's task file that does not validate
        raise ValueError(str(exc)) from None
    pin_tasks_dir()  # a user's task file is found from Flower's processes too, wherever they run
    return FederatedSettings(
        task=args.task, model=args.model, rounds=args.rounds, rounds_per_release=args.rounds_per_release,
        min_nodes=args.min_nodes, fraction=args.fraction, round_timeout_s=args.round_timeout, strategy=args.strategy,
        proximal_mu=args.mu, server_momentum=args.server_momentum, server_learning_rate=args.server_lr,
        trim_beta=args.trim, krum_malicious=args.krum_malicious, local_epochs=args.local_epochs,
        learning_rate=args.learning_rate, temperature=args.temperature, distill_weight=args.distill_weight,
        dp_noise=args.dp_noise, dp_clip=args.dp_clip, max_accuracy_drop=args.max_accuracy_drop,
        store=str(args.store or Path("store")), registry=args.registry or default_registry(), run=args.run_id,
    ).replace(**more)


def _stop_event() -> threading.Event:
    """Set on SIGTERM or SIGINT, so a run stops between polls and everything it started is stopped."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _print_row(record: RoundRecord) -> None:
    print(row(record), flush=True)


# -- serve ---------------------------------------------------------------------------------
def _add_serve(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser(
        "serve", help="run federated rounds with the fleet: a SuperLink, the training window, the round table",
        description="Start a Flower SuperLink (state in --state-dir, always with its database), open the training"
        " window (retained on the broker: agents with federated.enabled start their SuperNode while it is open),"
        " run the rounds and print each as it finishes; close the window and stop the SuperLink after. A SuperLink"
        " that dies is started again and the run resumes after its last finished round. With --no-broker no window"
        " is published (SuperNodes must be started some other way) and releases are not rolled out.",
    )
    _add_round_options(parser)
    parser.add_argument("--port", type=int, default=9092, help="SuperLink port (default 9092)")
    parser.add_argument("--host", default="0.0.0.0", help="SuperLink address to listen on (default 0.0.0.0)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help="SuperLink and run state")
    parser.add_argument("--ssl-certfile", type=Path, help="SuperLink TLS certificate (with --ssl-keyfile, --ssl-ca)")
    parser.add_argument("--ssl-keyfile", type=Path, help="SuperLink TLS key")
    parser.add_argument("--ssl-ca", type=Path, help="CA that signed the SuperLink's certificate")
    parser.add_argument("--enable-supernode-auth", action="store_true",
                        help="only registered SuperNodes may join (needs TLS): see --node-keys")
    parser.add_argument("--node-keys", type=Path, nargs="*", default=[], metavar="PUB",
                        help="SuperNode public keys to register (fedge-cloud fl node-key writes them)")
    parser.add_argument("--key", type=Path, default=None, help="release signing key (default: releases unsigned)")
    parser.add_argument("--group", default="default", help="device group releases go to")
    parser.add_argument("--canary", type=float, default=0.1, help="share of the group that tries a release first")
    parser.add_argument("--no-broker", action="store_true", help="no training window and no rollout")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    add_broker_options(parser)
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from cloud.federated.serve import serve
    from cloud.federated.superlink import SuperLink, SuperLinkError, SuperLinkTls

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls_files = (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca)
    try:
        if any(tls_files) and not all(tls_files):
            raise ValueError("TLS needs --ssl-certfile, --ssl-keyfile and --ssl-ca together")
        broker = None if args.no_broker else broker_settings(args)
        settings = _settings(args, state_dir=str(args.state_dir), key_file=str(args.key or ""), group=args.group,
                             canary=args.canary, broker="" if broker is None else args.broker,
                             broker_username=args.username or "", broker_password_env=args.password_env or "")
        settings.check()
        tls = SuperLinkTls(*tls_files) if all(tls_files) else None
        superlink = SuperLink(args.state_dir, args.port, host=args.host, tls=tls, node_auth=args.enable_supernode_auth)
    except ValueError as exc:
        print(f"fedge-cloud fl serve: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    stop = _stop_event()
    print(f"fedge-cloud fl serve: SuperLink on {args.host}:{args.port}, state in {args.state_dir}", flush=True)
    print(HEADER, flush=True)
    try:
        missing = [str(k) for k in args.node_keys if not k.is_file()]
        if missing:
            print(f"fedge-cloud fl serve: --node-keys: no such file: {', '.join(missing)}", file=sys.stderr)
            return ExitCode.INVALID_INPUT
        outcome = serve(settings, superlink, broker, Topics(args.prefix), _print_row, stop.is_set, args.node_keys)
    except (MissingFlower, SuperLinkError, BrokerConnectError, RegistryUnavailable, ConnectionError) as exc:
        print(f"fedge-cloud fl serve: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    if stop.is_set():
        return ExitCode.INTERRUPTED
    print(f"run {outcome.rounds[-1].run if outcome.rounds else settings.run}: {outcome.status}"
          f"{f' after {outcome.resumes} resume(s)' if outcome.resumes else ''}", flush=True)
    return ExitCode.OK if outcome.completed else ExitCode.FAILURE


# -- simulate ------------------------------------------------------------------------------
def _add_simulate(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cloud.federated.fleet_data import FleetPlan

    plan = FleetPlan()
    parser = actions.add_parser(
        "simulate", help="the same rounds on a simulated non-IID fleet, with Flower's simulation engine",
        description="Give each simulated device a Dirichlet(--dirichlet) mix of the task's classes, stream it through"
        " the serving edge model as an agent would (keep the offloaded and a share of audited inputs with the cloud's"
        " answers), then run the federated rounds with Flower's simulation engine (Ray) on those sample stores;"
        " without Ray, on real SuperNodes on loopback. Prints the round table; --out writes it as JSON.",
    )
    _add_round_options(parser)
    parser.add_argument("--devices", type=int, default=plan.devices, help=f"devices (default {plan.devices})")
    parser.add_argument("--dirichlet", type=float, default=plan.dirichlet,
                        help=f"class-mix concentration: small is skewed (default {plan.dirichlet:g})")
    parser.add_argument("--samples-per-device", type=int, default=plan.samples_per_device,
                        help=f"inputs each device's stream holds (default {plan.samples_per_device})")
    parser.add_argument("--threshold", type=float, default=plan.threshold,
                        help=f"devices offload below this confidence (default {plan.threshold:g})")
    parser.add_argument("--audit-rate", type=float, default=plan.audit_rate, help="share of confident inputs audited")
    parser.add_argument("--feedback-rate", type=float, default=plan.feedback_rate,
                        help="share of kept samples a user labelled")
    parser.add_argument("--min-samples", type=int, default=32, help="samples a device needs to take part")
    parser.add_argument("--device-epochs", type=int, default=10, help="each device's federated.local_epochs (default 10,"
                        " the profile's default)")
    parser.add_argument("--batch-size", type=int, default=32, help="each device's federated.batch_size")
    parser.add_argument("--attack", default="", help="what --attackers devices send: scale:FACTOR or nan")
    parser.add_argument("--attackers", type=int, default=0, help="devices that misbehave (the first ones)")
    parser.add_argument("--engine", choices=("auto", "simulation", "deployment"), default="auto",
                        help="Flower's simulation engine (Ray), real SuperNodes on loopback, or auto: Ray if installed")
    parser.add_argument("--seed", type=int, default=0, help="partitions and streams (default 0)")
    parser.add_argument("--work-dir", type=Path, default=Path("var/simulation"), help="the devices' sample stores")
    parser.add_argument("--out", type=Path, default=None, help="write the rounds as JSON here")
    parser.set_defaults(run=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from cloud.federated.fleet_data import FleetPlan
    from cloud.federated.simulate import Attack, SimulationError, simulate

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        attack = Attack.parse(args.attack, args.attackers) if args.attack else Attack()
        plan = FleetPlan(devices=args.devices, dirichlet=args.dirichlet, samples_per_device=args.samples_per_device,
                         threshold=args.threshold, audit_rate=args.audit_rate, feedback_rate=args.feedback_rate,
                         seed=args.seed)
        settings = _settings(args, state_dir=str(args.work_dir / "state"))
        settings.check()
        if args.devices < settings.min_nodes:
            raise ValueError(f"--min-nodes {settings.min_nodes} is more than the {args.devices} devices")
    except ValueError as exc:
        print(f"fedge-cloud fl simulate: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    print(HEADER, flush=True)
    try:
        records = simulate(settings, plan, args.work_dir, attack=attack, engine=args.engine, report=_print_row,
                           node={"min-samples": args.min_samples, "local-epochs": args.device_epochs,
                                 "batch-size": args.batch_size})
    except (SimulationError, ManifestError, LookupError, ConfigError) as exc:
        print(f"fedge-cloud fl simulate: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except (MissingFlower, RegistryUnavailable) as exc:
        print(f"fedge-cloud fl simulate: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([dataclasses.asdict(r) for r in records], indent=2))
    return ExitCode.OK if records and records[-1].participants > 0 else ExitCode.FAILURE


# -- loop --------------------------------------------------------------------------------
QUICK: dict[str, Any] = {"phases": 2, "rounds_per_phase": 1, "inputs_per_phase": 300}  # about 2 minutes


def _add_loop(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cloud.federated.loop import LoopPlan

    plan = LoopPlan()
    parser = actions.add_parser(
        "loop", help="the whole closed loop on one machine: agents, cloud, rounds, releases (make demo runs it)",
        description="Start a private broker (one user per device and service, the fleet's ACL), the coordinator"
        " with 2 workers and --devices agents from the shipped profiles, stream each agent's own non-IID inputs,"
        " then per phase: open the training window, run --rounds-per-phase federated rounds on real SuperNodes,"
        " compress, sign and roll out the aggregate through the canary and shadow gate, and stream again. The fleet"
        " starts from a first edge release trained on --first-edge-rows labelled rows; the cloud model comes from"
        " the store (trained into it first if missing, reused next time). Progress on the terminal; writes"
        " OUT/report.md with plots, and OUT/loop.json. Ctrl-C stops everything it started and writes what ran.",
    )
    parser.add_argument("--task", default=plan.task, help=f"task (default {plan.task})")
    parser.add_argument("--profiles", default=",".join(plan.profiles),
                        help=f"shipped profiles the devices run, in turn (default {','.join(plan.profiles)})")
    parser.add_argument("--devices", type=int, default=plan.devices, help=f"agents (default {plan.devices})")
    parser.add_argument("--phases", type=int, default=None,
                        help=f"training phases (default {plan.phases}; --quick {QUICK['phases']})")
    parser.add_argument("--rounds-per-phase", type=int, default=None,
                        help=f"rounds before each release (default {plan.rounds_per_phase};"
                        f" --quick {QUICK['rounds_per_phase']})")
    parser.add_argument("--inputs", type=int, default=None,
                        help=f"inputs each agent answers per phase (default {plan.inputs_per_phase};"
                        f" --quick {QUICK['inputs_per_phase']})")
    parser.add_argument("--dirichlet", type=float, default=plan.dirichlet,
                        help=f"how skewed each device's class mix is: Dirichlet alpha, smaller is more skewed"
                        f" (default {plan.dirichlet:g})")
    parser.add_argument("--first-edge-rows", type=int, default=plan.first_edge_rows,
                        help=f"labelled rows the first edge release is trained on (default {plan.first_edge_rows});"
                        " 0 starts from the store's edge model")
    parser.add_argument("--quick", action="store_true",
                        help="the same parts, shorter (about 2 minutes): fewer phases and inputs; --phases,"
                        " --rounds-per-phase and --inputs still apply")
    parser.add_argument("--out", type=Path, default=Path("loop-report"), help="report directory (default loop-report)")
    parser.add_argument("--dashboard", type=int, default=None, metavar="PORT",
                        help="serve the operator dashboard on http://127.0.0.1:PORT/ while the loop runs (0: a free"
                        " port, printed)")
    add_store_option(parser)
    parser.set_defaults(run=run_loop)


def run_loop(args: argparse.Namespace) -> int:
    import tempfile

    from cloud.federated.loop import LoopPlan, closed_loop, prepare_store
    from cloud.federated.loop_report import outcome, write_report
    from cloud.local.mosquitto import MosquittoError, free_port

    given = {"phases": args.phases, "rounds_per_phase": args.rounds_per_phase, "inputs_per_phase": args.inputs}
    plan = LoopPlan(task=args.task, profiles=tuple(p.strip() for p in args.profiles.split(",") if p.strip()),
                    devices=args.devices, first_edge_rows=args.first_edge_rows, dirichlet=args.dirichlet,
                    **(QUICK if args.quick else {}))
    plan = dataclasses.replace(plan, **{k: v for k, v in given.items() if v is not None})
    problems = plan.problems()
    if problems:
        print(f"fedge-cloud fl loop: {'; '.join(problems)}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="fedge-loop-") as tmp:
        try:
            store = prepare_store(store_of(args), Path(tmp) / "store", plan, say=_say, progress=sys.stderr.isatty())
        except KeyboardInterrupt:  # nothing runs yet but this process's training
            print("fedge-cloud fl loop: interrupted while preparing the models", file=sys.stderr)
            return ExitCode.INTERRUPTED
        stop = _stop_event()
        try:
            dashboard = free_port() if args.dashboard == 0 else args.dashboard
            report = closed_loop(store, Path(tmp), plan, _say, stop, dashboard=dashboard)
        except (MissingFlower, MosquittoError, TimeoutError, ManifestError, LookupError, DashboardUnavailable) as exc:
            print(f"fedge-cloud fl loop: {exc}", file=sys.stderr)
            return ExitCode.UNAVAILABLE
    path = write_report(report, args.out)
    print(f"report: {path} (plots and loop.json beside it)")
    print(outcome(report))
    if report.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.OK if sum(p.total.errors for p in report.phases) == 0 else ExitCode.FAILURE


def _say(line: str) -> None:
    """A line of progress that stays (above any live progress bar)."""
    from tqdm import tqdm

    tqdm.write(line)
    sys.stdout.flush()


# -- node-key ----------------------------------------------------------------------------
def _add_node_key(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser("node-key", help="a SuperNode key pair for node authentication",
                                description="Write NAME.key (ECDSA P-384, OpenSSH format, mode 0600: copy it to the"
                                " device, federated.auth_key_file) and NAME.pub (give it to fl serve --node-keys).")
    parser.add_argument("--dir", type=Path, default=Path("node-keys"), help="output directory (default node-keys)")
    parser.add_argument("--name", required=True, help="the device's name, e.g. its device id")
    parser.add_argument("--force", action="store_true", help="replace an existing pair")
    parser.set_defaults(run=run_node_key)


def run_node_key(args: argparse.Namespace) -> int:
    from cloud.federated.node_keys import write_node_key

    try:
        private, public = write_node_key(args.dir, args.name, force=args.force)
    except (FileExistsError, ValueError) as exc:
        print(f"fedge-cloud fl node-key: {exc}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    except OSError as exc:
        print(f"fedge-cloud fl node-key: cannot write {args.dir}: {os_error_reason(exc)}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    print(f"private key {private} (to the device: federated.auth_key_file), public key {public}"
          " (fl serve --node-keys)")
    return ExitCode.OK


# -- status --------------------------------------------------------------------------------
def _add_status(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser("status", help="the round table of a federated run, from the registry",
                                description="Print the rounds the registry holds for a run (default: the latest)"
                                " with what each aggregate scored, the offload it needs and the release made.")
    parser.add_argument("--run", dest="run_id", default=None, metavar="RUN", help="run id (default: the latest run)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_registry_option(parser)
    parser.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    registry = existing_registry_or_exit("fedge-cloud fl status", args.registry)
    if isinstance(registry, ExitCode):
        return registry
    with registry:
        every = registry.rounds()
        run = args.run_id or (every[-1].run if every else None)
        records = [r for r in every if r.run == run]
    if not records:
        print(f"fedge-cloud fl status: no rounds recorded{f' for run {run}' if run else ''}", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in records], indent=2))
    else:
        print(f"run {run} ({records[0].task})\n{table(records)}")
    return ExitCode.OK
