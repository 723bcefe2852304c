"""``fedge-cloud fl loop`` and ``make demo``: the whole closed loop on one machine, with every real part.

A private Mosquitto locked with the fleet's users and ACL, the coordinator with two
workers, and one agent per shipped device profile (its own device id, broker user and
non-IID stream of inputs): each answers locally or offloads, keeps the cloud's answers
and audits a share of confident ones. The fleet starts from a first edge release
trained on few labels (cloud/federated/first_release.py). Then phase by phase: the
training window opens, every agent whose profile takes part starts its Flower
SuperNode, K rounds fine-tune the edge model on what the agents kept, the aggregate is
compressed, signed and rolled out through the canary and shadow gate, and the agents
stream their next inputs with what they now run. ``stop`` (SIGINT, SIGTERM) ends it
between two steps; every process it started is stopped before it returns.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from agent.agent import Agent
from agent.model_store import ModelStore
from agent.profile import Profile, load_profile
from agent.profile.offload import BudgetPolicy
from agent.protocol import Topics
from cloud.federated.fleet_data import FleetPlan, dirichlet_partition, stream_pool
from cloud.federated.settings import FederatedSettings
from cloud.federated.superlink import SuperLink
from cloud.local.agents import Tally, stream
from cloud.local.fleet_broker import COORDINATOR, WORKER, FleetBroker, fleet_broker
from cloud.local.mosquitto import free_port
from cloud.registry import ModelEvent, RoundRecord, open_registry
from cloud.releases.keys import init_keys
from cloud.releases.signing import sign_stored
from cloud.serving.coordinator import Coordinator
from cloud.serving.worker import WorkerSettings
from cloud.zoo.tasks import DataOptions

PROFILES_DIR = Path(__file__).resolve().parents[2] / "edge_profiles"
SHIPPED_PROFILES = ("raspberry-pi-4", "x86-gateway", "jetson-orin-nano", "pi-zero-2w")
GROUP = "loop"
PASSWORD_ENV = "FEDGE_LOOP_COORDINATOR_PASSWORD"  # how the ServerApp's rollout learns the coordinator's password


@dataclass(frozen=True)
class LoopPlan:
    task: str = "mnist1d"
    profiles: tuple[str, ...] = SHIPPED_PROFILES  # device i runs profiles[i % len(profiles)]
    devices: int = 4
    phases: int = 5  # training phases; the agents stream before the first and after each
    rounds_per_phase: int = 1  # K: one release per phase
    inputs_per_phase: int = 400  # per device
    first_edge_rows: int = 1000  # the first edge release is trained on this many labelled rows; 0: the store's own
    dirichlet: float = 0.3
    learning_rate: float = 0.002  # the devices' profile trains 10 epochs per round
    seed: int = 0

    def problems(self) -> list[str]:
        """What is wrong with the plan, in words for the command line (empty when it can run)."""
        out = [f"{name} must be at least 1" for name, value in (
            ("devices", self.devices), ("phases", self.phases), ("rounds per phase", self.rounds_per_phase),
            ("inputs per phase", self.inputs_per_phase)) if value < 1]
        out += [] if self.profiles else ["no profiles named"]
        out += [f"no profile {name!r} in {PROFILES_DIR} (shipped: {', '.join(SHIPPED_PROFILES)})"
                for name in self.profiles if not (PROFILES_DIR / f"{name}.yaml").is_file()]
        if not self.dirichlet > 0:
            out.append("the Dirichlet alpha must be above 0")
        if self.first_edge_rows < 0:
            out.append("first edge rows must be 0 (the store's edge model) or more")
        return out


@dataclass(frozen=True)
class Device:
    """One agent of the loop: its id, the shipped profile it runs, its offload policy and whether it trains."""

    device_id: str
    profile: str
    policy: str
    trains: bool


@dataclass
class DeviceTally(Tally):
    """What one device answered in one streaming phase, and the edge version it ran at the phase's end."""

    version: str = ""


@dataclass
class Phase:
    phase: int
    devices: dict[str, DeviceTally] = field(default_factory=dict)

    @property
    def total(self) -> Tally:
        return Tally.summed(self.devices.values())


@dataclass
class LoopReport:
    plan: LoopPlan
    devices: list[Device]
    phases: list[Phase]
    rounds: list[RoundRecord]
    rollouts: list[ModelEvent]
    interrupted: bool = False

    def as_dict(self) -> dict[str, object]:
        def counts(t: Tally) -> dict[str, object]:
            return {"requests": t.requests, "errors": t.errors, "degraded": t.degraded,
                    "offload_rate": t.offload_rate, "accuracy": t.accuracy}

        return {"plan": dataclasses.asdict(self.plan), "interrupted": self.interrupted,
                "devices": [dataclasses.asdict(d) for d in self.devices],
                "phases": [{"phase": p.phase, **counts(p.total),
                            "versions": {d: t.version for d, t in p.devices.items()},
                            "devices": {d: counts(t) for d, t in p.devices.items()}} for p in self.phases],
                "rounds": [dataclasses.asdict(r) for r in self.rounds],
                "rollouts": [{"version": e.version, "state": e.state.value, "reason": e.reason, "at": e.at}
                             for e in self.rollouts]}


def prepare_store(source: ModelStore, target: Path, plan: LoopPlan, say: Callable[[str], None],
                  progress: bool = False) -> ModelStore:
    """The loop's own store: the task's cloud model and the fleet's first edge release.

    The cloud model is trained into ``source`` if missing (reused next time); the first edge release is
    trained here on ``plan.first_edge_rows`` rows, or with 0 is the source's newest edge model.
    """
    from cloud.federated.first_release import first_edge_release
    from cloud.zoo.pipeline import train_and_publish
    from cloud.zoo.tasks import model_name

    roles = ("cloud",) if plan.first_edge_rows else ("cloud", "edge")
    for role in roles:
        name = model_name(plan.task, role)
        if not source.versions(plan.task, name):
            say(f"training {plan.task}/{role} into {source.root} (reused next time) ...")
            train_and_publish(source, plan.task, role, progress=progress)
        stored = source.get(plan.task, name)
        shutil.copytree(stored.directory, target / plan.task / name / str(stored.manifest.version))
    store = ModelStore(target)
    if plan.first_edge_rows:
        first = first_edge_release(store, plan.task, plan.first_edge_rows, seed=plan.seed, progress=progress)
        m = first.manifest
        say(f"first edge release: {m.name} v{m.version} trained on {plan.first_edge_rows} labelled rows,"
            f" {m.recipe.get('quantization') if m.recipe else '?'}, {m.metrics['test_accuracy']:.1%} on the test rows")
    return store


def plan_devices(plan: LoopPlan) -> list[Device]:
    """Device ``i`` runs ``plan.profiles[i % n]`` under the id that profile ships with (numbered when repeated)."""
    devices: list[Device] = []
    for i in range(plan.devices):
        name = plan.profiles[i % len(plan.profiles)]
        profile = load_profile(PROFILES_DIR / f"{name}.yaml", env={})
        repeat = i // len(plan.profiles)
        device_id = profile.device.id if repeat == 0 else f"{profile.device.id}-{repeat + 1}"
        devices.append(Device(device_id, name, describe_policy(profile, plan.task), profile.federated.enabled))
    return devices


def describe_policy(profile: Profile, task: str) -> str:
    """A profile's offload policy for ``task`` in a few words."""
    policy = profile.offload[task]
    if isinstance(policy, BudgetPolicy):
        return f"budget {policy.target_rate:.0%} by {policy.metric}"
    return f"threshold {policy.metric} {policy.threshold:g}"


def _agent(device: Device, store: ModelStore, work: Path, fleet: FleetBroker, superlink_port: int, public_key: Path,
           task: str) -> Agent:
    """An agent from its shipped profile, on this machine: its own state, store copy, broker user and ports."""
    state = work / device.device_id
    serving = store.get(task, f"{task}-edge")
    own = state / "models" / task / serving.manifest.name / str(serving.manifest.version)
    if not own.exists():
        shutil.copytree(serving.directory, own)
    env = {**fleet.agent_overrides(device.device_id, state), "FEDGE__API__ENABLED": "false",
           "FEDGE__METRICS__HEARTBEAT_INTERVAL_S": "1",
           "FEDGE__UPDATES__ENABLED": "true", "FEDGE__UPDATES__PUBLIC_KEY_FILE": str(public_key),
           "FEDGE__UPDATES__GROUP": GROUP}
    if device.trains:
        env |= {"FEDGE__FEDERATED__SERVER_ADDRESS": f"127.0.0.1:{superlink_port}",
                "FEDGE__FEDERATED__CLIENTAPP_PORT": str(free_port()), "FEDGE__FEDERATED__MIN_SAMPLES": "16"}
    profile = load_profile(PROFILES_DIR / f"{device.profile}.yaml", env)
    only = {"models": {task: profile.models[task]}, "offload": {task: profile.offload[task]}}
    return Agent(profile.model_copy(update=only)).start()


def _online(agents: list[Agent]) -> int:
    return sum(1 for a in agents if a.uplink is not None and a.uplink.connected)


@contextmanager
def _live(bar: tqdm, describe: Callable[[], str],  # type: ignore[type-arg]
          position: Callable[[], int] | None = None) -> Iterator[None]:
    """Refresh ``bar`` (its count from ``position``, its text from ``describe``) twice a second; closed after.

    Off a terminal tqdm disables the bar and this does nothing: the lines ``say`` prints stay.
    """
    done = threading.Event()

    def refresh() -> None:
        while not done.wait(0.5):
            if position is not None:
                bar.n = position()
            bar.set_postfix_str(describe())

    thread = threading.Thread(target=refresh, daemon=True)
    if not bar.disable:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if thread.is_alive():
            thread.join()
        bar.close()


def _stream(agents: list[Agent], task: str, x: np.ndarray, y: np.ndarray, parts: list[np.ndarray], phase: Phase,
            stop: threading.Event) -> None:
    """Each agent answers its own inputs (from threads of its own, as its callers would), all at once."""
    for agent in agents:
        phase.devices[agent.device_id] = DeviceTally()
    threads = [threading.Thread(target=stream, args=(a, task, x[p], y[p], phase.devices[a.device_id]),
                                kwargs={"stop": stop}) for a, p in zip(agents, parts, strict=True)]
    bar = tqdm(total=sum(len(p) for p in parts), desc=f"phase {phase.phase}", unit="answer", disable=None,
               leave=False)

    def describe() -> str:
        whole = phase.total
        return (f"offload {whole.offload_rate:.1%}, accuracy {whole.accuracy:.1%},"
                f" devices online {_online(agents)}/{len(agents)}")

    with _live(bar, describe, lambda: sum(t.requests for t in phase.devices.values())):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for agent in agents:
        phase.devices[agent.device_id].version = agent.local_model(task).version


def closed_loop(store: ModelStore, work: Path, plan: LoopPlan, say: Callable[[str], None], stop: threading.Event,
                dashboard: int | None = None) -> LoopReport:
    """Run the loop; every process it starts is stopped before it returns, also when ``stop`` is set meanwhile.

    ``dashboard``: a port on 127.0.0.1 where the coordinator serves the operator dashboard meanwhile.
    """
    task, registry_url = plan.task, str(work / "registry.db")
    devices = plan_devices(plan)
    trainers = sum(d.trains for d in devices)
    if not trainers:
        raise LookupError(f"none of the profiles {', '.join(plan.profiles)} takes part in federated rounds"
                          " (federated.enabled)")
    private, public = init_keys(work / "keys", force=True)
    serving = store.get(task, f"{task}-edge")
    sign_stored(store, task, serving.manifest.name, serving.manifest.version, private)  # the rollback target
    per_device = plan.inputs_per_phase * (plan.phases + 1)
    x, y = stream_pool(task, FleetPlan(devices=plan.devices, samples_per_device=per_device, seed=plan.seed),
                       DataOptions())
    # A device's inputs arrive in random order, each phase a draw from its own class mix (the partition lists
    # a device's rows class by class: sliced as is, every phase would see other classes).
    order = np.random.default_rng(plan.seed + 1)
    partitions = [order.permutation(p) for p in
                  dirichlet_partition(y, plan.devices, plan.dirichlet, per_device, np.random.default_rng(plan.seed))]
    phases: list[Phase] = []
    port = free_port()
    settings = FederatedSettings(task=task, rounds=0, rounds_per_release=plan.rounds_per_phase, min_nodes=trainers,
                                 round_timeout_s=180, learning_rate=plan.learning_rate, store=str(store.root),
                                 registry=registry_url, run=f"loop-{int(time.time())}", state_dir=str(work / "fl"),
                                 key_file=str(private), group=GROUP, canary=0.34, rollout_timeout_s=120,
                                 broker_username=COORDINATOR, broker_password_env=PASSWORD_ENV)
    with fleet_broker(work, [d.device_id for d in devices]) as fleet, _environment(
            PASSWORD_ENV, fleet.access.secrets[COORDINATOR]):
        settings = settings.replace(broker=fleet.broker.url)
        say(f"private broker on {fleet.broker.url} (one user per device and service, the fleet's ACL);"
            f" the coordinator with 2 workers; {len(devices)} agents: "
            + ", ".join(f"{d.device_id} ({d.profile}{'' if d.trains else ', does not train'})" for d in devices))
        coordinator = Coordinator(WorkerSettings(store=store.root, broker=fleet.settings_for(WORKER),
                                                 worker_id="loop-worker", registry_url=registry_url), workers=2,
                                  status_interval_s=0.5, username=COORDINATOR,
                                  password=fleet.access.secrets[COORDINATOR],
                                  dashboard=None if dashboard is None else ("127.0.0.1", dashboard))
        if dashboard is not None:
            say(f"dashboard: http://127.0.0.1:{dashboard}/ (while the loop runs)")
        runner = threading.Thread(target=coordinator.run, daemon=True)
        runner.start()
        agents: list[Agent] = []
        try:
            agents = [_agent(d, store, work, fleet, port, public, task) for d in devices]
            _wait_for_cloud(agents, stop)
            for number in range(plan.phases + 1):
                if stop.is_set():
                    break
                if number:
                    settings = settings.replace(rounds=number * plan.rounds_per_phase)
                    _train(settings, work, port, fleet, agents, plan, number, say, stop)
                    _wait_for_release(agents, store, registry_url, task, say, stop)
                    if stop.is_set():
                        break
                phase = Phase(number)
                rows = [p[number * plan.inputs_per_phase:(number + 1) * plan.inputs_per_phase] for p in partitions]
                _stream(agents, task, x, y, rows, phase, stop)
                phases.append(phase)
                whole = phase.total
                say(f"phase {number} stream: {whole.requests} answers, offload {whole.offload_rate:.1%},"
                    f" accuracy {whole.accuracy:.1%}, devices online {_online(agents)}/{len(agents)},"
                    f" edge versions {sorted({t.version for t in phase.devices.values()})}")
        finally:
            for agent in agents:
                agent.stop()
            coordinator.stop()
            runner.join(30)
    with open_registry(registry_url) as registry:
        rounds = registry.rounds(settings.run)
        rollouts = registry.model_history(task, f"{task}-edge")
    return LoopReport(plan, devices, phases, rounds, rollouts, interrupted=stop.is_set())


def _train(settings: FederatedSettings, work: Path, port: int, fleet: FleetBroker, agents: list[Agent],
           plan: LoopPlan, number: int, say: Callable[[str], None], stop: threading.Event) -> None:
    """One training phase: the window opens, K rounds run on the SuperNodes, the aggregate is offered as a release."""
    from cloud.federated.serve import serve  # torch and Flower: not for `fl loop --help`

    say(f"phase {number}: {plan.rounds_per_phase} federated round(s), then a release through canary and shadow gate")
    trainers = [a for a in agents if a.supernode is not None]
    bar = tqdm(total=plan.rounds_per_phase, desc="federated rounds", unit="round", disable=None, leave=False)

    def reported(r: RoundRecord) -> None:
        earlier = settings.rounds - plan.rounds_per_phase  # serve reports the run from its start: printed before
        if r.round <= earlier and (earlier or r.round):  # (round 0, the starting point, with the first phase)
            return
        bar.update(1 if r.round else 0)
        say(f"  round {r.round}: {r.participants} devices, accuracy {r.accuracy:.1%},"
            f" offload needed {r.offload_rate:.1%}{'; ' + r.release if r.release else ''}")

    with _live(bar, lambda: f"SuperNodes up {sum(a.supernode.running for a in trainers if a.supernode)}"
                            f"/{len(trainers)}, devices online {_online(agents)}/{len(agents)}"):
        serve(settings, SuperLink(work / "superlink", port, host="127.0.0.1"), fleet.settings_for(COORDINATOR),
              Topics(), reported, stop.is_set)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment while the block runs (Flower's processes inherit it)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _wait_for_release(agents: list[Agent], store: ModelStore, registry_url: str, task: str,
                      say: Callable[[str], None], stop: threading.Event, timeout: float = 60.0) -> None:
    """Let every agent install the version the registry now serves, so the next phase measures it.

    A promotion returns once the release is published; each agent downloads and swaps it in its own time.
    """
    from cloud.federated.rounds import current_release

    with open_registry(registry_url) as registry:
        version = current_release(store, registry, task, f"{task}-edge").manifest.version
    deadline = time.monotonic() + timeout
    while any(a.local_model(task).version != str(version) for a in agents):
        if time.monotonic() > deadline:
            say(f"  not every agent serves v{version} after {timeout:g} s; streaming anyway")
            return
        if stop.wait(0.2):
            return


def _wait_for_cloud(agents: list[Agent], stop: threading.Event, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(a.uplink and a.uplink.cloud_status and a.uplink.cloud_status.doc.get("workers_alive") for a in agents):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cloud workers did not report within {timeout:g} s")
        if stop.wait(0.1):
            return
