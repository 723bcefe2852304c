"""``fedge-cloud fl loop``: the whole closed loop on one machine, with every real part.

A private Mosquitto, the coordinator with two workers, N agents (the shipped
raspberry-pi-4 profile, one device id each) streaming their own non-IID inputs:
they answer locally or offload, keep the cloud's answers, and audit a share of
confident answers. Then phase by phase: the training window opens, each agent
starts its Flower SuperNode, K rounds fine-tune the edge model on what the agents
kept, the aggregate is compressed, signed and rolled out through the canary and
shadow gate, and the agents stream their next inputs with what they now run. The
report shows the offload rate and accuracy per phase and the rounds in between.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.agent import Agent
from agent.model_store import ModelStore
from agent.profile import load_profile
from agent.protocol import Topics
from cloud.federated.fleet_data import FleetPlan, dirichlet_partition, stream_pool
from cloud.federated.settings import FederatedSettings
from cloud.federated.superlink import SuperLink
from cloud.local.agents import Tally, local_overrides, stream
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.registry import RoundRecord, open_registry
from cloud.releases.keys import init_keys
from cloud.releases.signing import sign_stored
from cloud.serving.coordinator import Coordinator
from cloud.serving.worker import WorkerSettings
from cloud.zoo.tasks import DataOptions

PROFILE = Path(__file__).resolve().parents[2] / "edge_profiles" / "raspberry-pi-4.yaml"
GROUP = "loop"


@dataclass(frozen=True)
class LoopPlan:
    task: str = "mnist1d"
    devices: int = 3
    phases: int = 2  # training phases; the agents stream before the first and after each
    rounds_per_phase: int = 2  # K: one release per phase
    inputs_per_phase: int = 300  # per device
    dirichlet: float = 0.3
    learning_rate: float = 0.002  # the devices' profile trains 10 epochs per round
    seed: int = 0


@dataclass
class PhaseTally(Tally):
    """What the fleet answered in one streaming phase, and the edge version each device ran at its end."""

    phase: int = 0
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class LoopReport:
    plan: LoopPlan
    phases: list[PhaseTally]
    rounds: list[RoundRecord]

    def as_dict(self) -> dict[str, object]:
        return {"plan": asdict(self.plan),
                "phases": [{"phase": p.phase, "requests": p.requests, "errors": p.errors, "degraded": p.degraded,
                            "offload_rate": p.offload_rate, "accuracy": p.accuracy, "versions": p.versions}
                           for p in self.phases],
                "rounds": [asdict(r) for r in self.rounds]}


def copy_task_models(source: ModelStore, target: Path, task: str, say: Callable[[str], None]) -> ModelStore:
    """The task's newest cloud and edge models copied into ``target`` (trained into ``source`` first if missing)."""
    from cloud.zoo.pipeline import train_and_publish
    from cloud.zoo.tasks import model_name

    for role in ("cloud", "edge"):
        name = model_name(task, role)
        if not source.versions(task, name):
            say(f"training {task}/{role} into {source.root} (reused next time) ...")
            train_and_publish(source, task, role, progress=False)
        stored = source.get(task, name)
        shutil.copytree(stored.directory, target / task / name / str(stored.manifest.version))
    return ModelStore(target)


def _agent(store: ModelStore, work: Path, device: int, broker: Mosquitto, superlink_port: int, public_key: Path,
           task: str) -> Agent:
    """An agent from the shipped profile, on this machine: its own state, store copy and ports."""
    state = work / f"device-{device}"
    serving = store.get(task, f"{task}-edge")
    own = state / "models" / task / serving.manifest.name / str(serving.manifest.version)
    if not own.exists():
        shutil.copytree(serving.directory, own)
    env = {**local_overrides(broker, state), "FEDGE__DEVICE__ID": f"loop-{device}", "FEDGE__API__ENABLED": "false",
           "FEDGE__METRICS__HEARTBEAT_INTERVAL_S": "1", "FEDGE__FEDERATED__ENABLED": "true",
           "FEDGE__FEDERATED__SERVER_ADDRESS": f"127.0.0.1:{superlink_port}",
           "FEDGE__FEDERATED__CLIENTAPP_PORT": str(free_port()), "FEDGE__FEDERATED__MIN_SAMPLES": "16",
           "FEDGE__UPDATES__ENABLED": "true", "FEDGE__UPDATES__PUBLIC_KEY_FILE": str(public_key),
           "FEDGE__UPDATES__GROUP": GROUP}
    profile = load_profile(PROFILE, env)
    only = {"models": {task: profile.models[task]}, "offload": {task: profile.offload[task]}}
    return Agent(profile.model_copy(update=only)).start()


def _stream(agents: list[Agent], task: str, x: np.ndarray, y: np.ndarray, parts: list[np.ndarray],
            tally: PhaseTally) -> None:
    """Each agent answers its own inputs (from threads of its own, as its callers would), all at once."""
    tallies = [Tally() for _ in agents]
    threads = [threading.Thread(target=stream, args=(a, task, x[p], y[p], t))
               for a, p, t in zip(agents, parts, tallies, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for one in tallies:
        tally.requests, tally.errors = tally.requests + one.requests, tally.errors + one.errors
        tally.offloaded, tally.correct = tally.offloaded + one.offloaded, tally.correct + one.correct
        tally.degraded += one.degraded
    tally.versions = {a.device_id: a.local_model(task).version for a in agents}


def closed_loop(store: ModelStore, work: Path, plan: LoopPlan, say: Callable[[str], None],
                dashboard: int | None = None) -> LoopReport:
    """Run the loop; every process it starts is stopped before it returns.

    ``dashboard``: a port on 127.0.0.1 where the coordinator serves the operator dashboard meanwhile.
    """
    from cloud.federated.serve import serve  # torch and Flower: not for `fl loop --help`

    task, registry_url = plan.task, str(work / "registry.db")
    private, public = init_keys(work / "keys", force=True)
    serving = store.get(task, f"{task}-edge")
    sign_stored(store, task, serving.manifest.name, serving.manifest.version, private)  # the rollback target
    data = DataOptions()
    x, y = stream_pool(task, FleetPlan(devices=plan.devices, samples_per_device=plan.inputs_per_phase
                                       * (plan.phases + 1), seed=plan.seed), data)
    rng = np.random.default_rng(plan.seed)
    partitions = dirichlet_partition(y, plan.devices, plan.dirichlet, plan.inputs_per_phase * (plan.phases + 1), rng)
    phases: list[PhaseTally] = []
    port = free_port()
    settings = FederatedSettings(task=task, rounds=0, rounds_per_release=plan.rounds_per_phase, min_nodes=plan.devices,
                                 round_timeout_s=180, learning_rate=plan.learning_rate, store=str(store.root),
                                 registry=registry_url, run=f"loop-{int(time.time())}", state_dir=str(work / "fl"),
                                 key_file=str(private), group=GROUP, canary=0.34, rollout_timeout_s=120)
    with Mosquitto(work / "broker") as broker:
        settings = settings.replace(broker=broker.url)
        say(f"private broker on {broker.url}; the coordinator with 2 workers; {plan.devices} agents")
        coordinator = Coordinator(WorkerSettings(store=store.root, broker=broker.settings, worker_id="loop-worker",
                                                 registry_url=registry_url), workers=2, status_interval_s=0.5,
                                  dashboard=None if dashboard is None else ("127.0.0.1", dashboard))
        if dashboard is not None:
            say(f"dashboard: http://127.0.0.1:{dashboard}/ (while the loop runs)")
        runner = threading.Thread(target=coordinator.run, daemon=True)
        runner.start()
        agents: list[Agent] = []
        try:
            agents = [_agent(store, work, i, broker, port, public, task) for i in range(plan.devices)]
            _wait_for_cloud(agents)
            for phase in range(plan.phases + 1):
                if phase:
                    say(f"phase {phase}: {plan.rounds_per_phase} federated rounds, then a signed rollout")
                    settings = settings.replace(rounds=phase * plan.rounds_per_phase)
                    serve(settings, SuperLink(work / "superlink", port, host="127.0.0.1"), broker.settings, Topics(),
                          lambda r: say(f"  round {r.round}: {r.participants} devices, accuracy {r.accuracy:.1%},"
                                        f" offload needed {r.offload_rate:.1%}{'; ' + r.release if r.release else ''}"))
                    _wait_for_release(agents, store, registry_url, task, say)
                tally = PhaseTally(phase=phase)
                rows = [p[phase * plan.inputs_per_phase:(phase + 1) * plan.inputs_per_phase] for p in partitions]
                _stream(agents, task, x, y, rows, tally)
                phases.append(tally)
                say(f"phase {phase} stream: offload {tally.offload_rate:.1%}, accuracy {tally.accuracy:.1%},"
                    f" edge versions {sorted(set(tally.versions.values()))}")
        finally:
            for agent in agents:
                agent.stop()
            coordinator.stop()
            runner.join(30)
    with open_registry(registry_url) as registry:
        rounds = registry.rounds(settings.run)
    return LoopReport(plan, phases, rounds)


def _wait_for_release(agents: list[Agent], store: ModelStore, registry_url: str, task: str,
                      say: Callable[[str], None], timeout: float = 60.0) -> None:
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
        time.sleep(0.2)


def _wait_for_cloud(agents: list[Agent], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(a.uplink and a.uplink.cloud_status and a.uplink.cloud_status.doc.get("workers_alive") for a in agents):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cloud workers did not report within {timeout:g} s")
        time.sleep(0.1)


def write_report(report: LoopReport, out: Path) -> Path:
    """``out/loop.json`` and ``out/loop.png`` (offload and accuracy per phase, the rounds between)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "loop.json").write_text(json.dumps(report.as_dict(), indent=2))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    phases = [p.phase for p in report.phases]
    left.plot(phases, [p.offload_rate for p in report.phases], marker="o", label="offload rate")
    left.plot(phases, [p.accuracy for p in report.phases], marker="s", label="accuracy")
    left.set(xlabel="phase (a release after each)", title="The fleet's streams", ylim=(0, 1))
    left.legend()
    right.plot([r.round for r in report.rounds], [r.accuracy or 0 for r in report.rounds], marker="o",
               label="aggregate accuracy")
    right.plot([r.round for r in report.rounds], [r.offload_rate or 0 for r in report.rounds], marker="s",
               label="offload needed (held-out)")
    right.set(xlabel="round", title="Federated rounds", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(out / "loop.png", dpi=110)
    plt.close(fig)
    return out / "loop.json"
