"""`make demo ARGS=--quick` as a user runs it: trains into an empty store, serves, streams, stops, exits 0."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from agent.profile import load_profile
from agent.profile.offload import BudgetPolicy

REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "cloud.local.demo", "--quick", "--store", str(tmp_path / "store")],
                            capture_output=True, check=False, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = [line.split() for line in result.stdout.splitlines() if line.startswith(("raspberry-pi-4", "x86-gateway"))]
    assert {(row[0], row[1]) for row in table} == {(p, t) for p in ("raspberry-pi-4", "x86-gateway")
                                                   for t in ("mnist1d", "digits")}
    offload = {(row[0], row[1]): float(row[3].rstrip("%")) / 100 for row in table}
    accuracy = {(row[0], row[1]): float(row[4].rstrip("%")) / 100 for row in table}
    for row in table:
        assert int(row[2]) == 300 and int(row[-1]) == 0  # requests, errors
    for device in ("raspberry-pi-4", "x86-gateway"):  # a budget policy keeps its share (twice it, for a short run)
        profile = load_profile(REPO / "edge_profiles" / f"{device}.yaml", env={})
        for task, policy in profile.offload.items():
            if isinstance(policy, BudgetPolicy):
                assert offload[(device, task)] <= 2 * policy.target_rate, (device, task, offload)
    # the cascade's point: the device that asks the cloud more often is the more accurate one
    mnist_pi, mnist_gw = ("raspberry-pi-4", "mnist1d"), ("x86-gateway", "mnist1d")
    assert offload[mnist_pi] > offload[mnist_gw] and accuracy[mnist_pi] > accuracy[mnist_gw], (offload, accuracy)
    assert "Traceback" not in result.stderr
    port = int(re.search(r"private broker on mqtt://127\.0\.0\.1:(\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the demo's broker is still running"
