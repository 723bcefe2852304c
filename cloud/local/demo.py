"""`make demo`: the whole loop on one machine, started and stopped by this script.

Trains (or reuses) the zoo's MNIST-1D and digits models in ./store, starts a
private Mosquitto, the coordinator with 2 worker processes, and two agents
from different device profiles (raspberry-pi-4: threshold policy; x86-gateway:
a 5 % offload budget), streams test inputs through both, and prints a table
per agent and task. Everything it started is stopped before it exits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from agent.agent import Agent
from agent.exit_codes import ExitCode
from agent.model_store import ModelStore
from agent.profile import load_profile
from cloud.local.agents import Tally, local_overrides, stream
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.serving.coordinator import Coordinator
from cloud.serving.worker import WorkerSettings
from cloud.store import default_store_root
from cloud.zoo.pipeline import train_and_publish
from cloud.zoo.tasks import DataOptions, get_task, model_name

REPO = Path(__file__).resolve().parents[2]
PROFILES = ("raspberry-pi-4", "x86-gateway")
TASKS = ("mnist1d", "digits")


def _ensure_models(store: ModelStore, quick: bool) -> None:
    for task in TASKS:
        for role in ("cloud", "edge"):
            if store.versions(task, model_name(task, role)):
                continue
            print(f"training {task}/{role} (reused next time from {store.root}) ...", flush=True)
            epochs = 6 if quick else None
            result = train_and_publish(store, task, role, epochs=epochs, data=DataOptions(), progress=not quick)
            print(f"  {task}/{role}: test accuracy {result.test_accuracy:.2%}", flush=True)


def _agent(profile: str, broker: Mosquitto, store: ModelStore, state: Path) -> Agent:
    env = {**local_overrides(broker, state / profile), "FEDGE__API__HOST": "127.0.0.1",
           "FEDGE__API__PORT": str(free_port())}
    return Agent(load_profile(str(REPO / "edge_profiles" / f"{profile}.yaml"), env), store_root=store.root).start()


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return f"{np.percentile(values, q):.2f}"


def _table(results: dict[tuple[str, str], Tally]) -> str:
    head = (f"{'agent':<16} {'task':<8} {'requests':>8} {'offload':>8} {'accuracy':>9} {'local p50':>9} {'p99':>7}"
            f" {'cloud p50':>9} {'p99':>7} {'degraded':>8} {'errors':>6}")
    rows = [head, "-" * len(head)]
    for (profile, task), t in results.items():
        rows.append(f"{profile:<16} {task:<8} {t.requests:>8} {t.offloaded / max(t.requests, 1):>8.1%}"
                    f" {t.correct / max(t.requests, 1):>9.2%} {_pct(t.local_ms, 50):>9} {_pct(t.local_ms, 99):>7}"
                    f" {_pct(t.cloud_ms, 50):>9} {_pct(t.cloud_ms, 99):>7} {t.degraded:>8} {t.errors:>6}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud.local.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter training (first run) and 300 inputs per stream")
    parser.add_argument("--store", type=Path, default=None, help="model store (default: $FEDGE_STORE or ./store)")
    args = parser.parse_args(argv)
    store = ModelStore(args.store or default_store_root())
    _ensure_models(store, args.quick)
    n = 300 if args.quick else 1000
    results: dict[tuple[str, str], Tally] = {}
    with tempfile.TemporaryDirectory(prefix="fedge-demo-") as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        print(f"private broker on {broker.url}; starting the coordinator with 2 workers ...", flush=True)
        coordinator = Coordinator(WorkerSettings(store=store.root, broker=broker.settings,
                                                 worker_id="demo-worker", registry_url=str(Path(tmp) / "registry.db")),
                                  workers=2, status_interval_s=0.5)
        runner = threading.Thread(target=coordinator.run, daemon=True)
        runner.start()
        agents = [_agent(profile, broker, store, Path(tmp)) for profile in PROFILES]
        try:
            deadline = time.monotonic() + 60
            while not all(a.uplink and a.uplink.cloud_status and a.uplink.cloud_status.doc.get("workers_alive") == 2
                          for a in agents):
                if time.monotonic() > deadline:
                    print("the workers did not come up within 60 s", file=sys.stderr)
                    return ExitCode.UNAVAILABLE
                time.sleep(0.1)
            print(f"agents {', '.join(PROFILES)} ready; streaming {n} test inputs per agent and task ...", flush=True)
            for task in TASKS:
                data = get_task(task).load(DataOptions())
                x, y = data.x_test[:n], data.y_test[:n]
                for profile, agent in zip(PROFILES, agents, strict=True):
                    results[(profile, task)] = tally = Tally()
                    stream(agent, task, x, y, tally)
        finally:
            for agent in agents:
                agent.stop()
            coordinator.stop()
            runner.join(30)
    print()
    print(_table(results))
    print()
    print("latencies in ms, end to end through Agent.infer; 'offload' is the share answered by the cloud.")
    print("Federated rounds with signed rollouts run in: fedge-cloud fl loop. Not in this demo yet: a dashboard.")
    lost = sum(t.errors for t in results.values())
    return ExitCode.OK if lost == 0 and statistics.fmean(t.requests for t in results.values()) > 0 else ExitCode.FAILURE


if __name__ == "__main__":
    sys.exit(main())
