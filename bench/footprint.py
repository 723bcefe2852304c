"""Footprint: the agent daemon's idle memory and start-to-ready time, against bare ONNX Runtime.

Baseline in the same run: ``python -c "import onnxruntime"`` (the least any
ONNX Runtime agent can cost). The agent is the real ``fedge-agent run`` with a
profile serving the MNIST-1D edge model and offloading through a private
broker. Goals (from the edge-agent issue): idle RSS <= 100 MB, start to ready
<= 1.0 s; ratios to the baseline are reported beside them.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from agent.metrics import rss_mb
from agent.model_store import ModelStore
from bench.results_file import Goal, bench_arguments, write_result
from bench.zoo_models import train_zoo
from cloud.local.mosquitto import Mosquitto, free_port

BASELINE = "import sys, onnxruntime; print('ready', flush=True); sys.stdin.read()"
MODULES_PROBE = """
import sys
from agent.agent import Agent
from agent.profile import load_profile
agent = Agent(load_profile(sys.argv[1]), store_root=sys.argv[2], api_port=0).start()
print(len(sys.modules), any(m == "torch" or m.startswith("torch.") for m in sys.modules))
agent.stop()
"""


def _start(argv: list[str]) -> tuple[float, float]:
    """Seconds from spawn to the process's 'ready' line, and its RSS after a second of idling."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        ready_s = time.perf_counter() - started
        if "ready" not in line:
            raise RuntimeError(f"{argv[0]} did not become ready: {line!r}")
        time.sleep(1.0)
        rss = rss_mb(proc.pid)
        if rss is None:
            raise RuntimeError(f"cannot read the memory of process {proc.pid} (no /proc?)")
        return ready_s, rss
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("footprint", __doc__, argv, "one start of each instead of five")
    runs = 1 if args.quick else 5
    agent_cli = str(Path(sys.executable).with_name("fedge-agent"))
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        store = ModelStore(Path(tmp) / "store")
        train_zoo(store, "mnist1d", quick=True, roles=("edge",))  # the footprint does not depend on accuracy
        profile = Path(tmp) / "profile.yaml"
        profile.write_text(yaml.safe_dump({
            "device": {"id": "footprint", "kind": "bench"},
            "models": {"mnist1d": {"name": "mnist1d-edge", "input": {"shape": [-1, 40]}}},
            "offload": {"mnist1d": {"mode": "threshold", "metric": "max_prob", "threshold": 0.8}},
            "broker": {"host": broker.host, "port": broker.port},
            "api": {"port": free_port()},
            "storage": {"directory": str(Path(tmp) / "state")},
            "metrics": {"heartbeat_interval_s": 5},
        }))
        baseline = [_start([sys.executable, "-c", BASELINE]) for _ in range(runs)]
        agent = [_start([agent_cli, "run", "--profile", str(profile), "--store", str(store.root), "--api-port", "0"])
                 for _ in range(runs)]
        probe = subprocess.run([sys.executable, "-c", MODULES_PROBE, str(profile), str(store.root)],
                               capture_output=True, text=True, timeout=120, check=True).stdout.split()
    metrics: dict[str, Any] = {
        "baseline_ready_s": round(statistics.median(r for r, _ in baseline), 3),
        "baseline_rss_mb": round(statistics.median(m for _, m in baseline), 1),
        "agent_ready_s": round(statistics.median(r for r, _ in agent), 3),
        "agent_rss_mb": round(statistics.median(m for _, m in agent), 1),
        "agent_modules": int(probe[0]),
        "torch_imported": probe[1] == "True",
    }
    metrics["ready_ratio_vs_onnxruntime"] = round(metrics["agent_ready_s"] / metrics["baseline_ready_s"], 3)
    metrics["rss_ratio_vs_onnxruntime"] = round(metrics["agent_rss_mb"] / metrics["baseline_rss_mb"], 3)
    goals = {"agent_idle_rss_mb": Goal(metrics["agent_rss_mb"], "<=", 100.0),
             "agent_start_to_ready_s": Goal(metrics["agent_ready_s"], "<=", 1.0)}
    path = write_result("footprint", {"runs": runs, "model": "mnist1d-edge"}, metrics, goals,
                        results_dir=args.results_dir)
    print(f"footprint: {metrics}\nfootprint: wrote {path}")
    return path


if __name__ == "__main__":
    main()
