"""`make demo ARGS=--quick` as a user runs it: trains into an empty store, serves, streams, stops, exits 0."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path


def test_quick_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "cloud.demo", "--quick", "--store", str(tmp_path / "store")],
                            capture_output=True, check=False, text=True, timeout=600,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = [line.split() for line in result.stdout.splitlines() if line.startswith(("raspberry-pi-4", "x86-gateway"))]
    assert {(row[0], row[1]) for row in table} == {(p, t) for p in ("raspberry-pi-4", "x86-gateway")
                                                   for t in ("mnist1d", "digits")}
    for row in table:
        requests, offload, errors = int(row[2]), float(row[3].rstrip("%")), int(row[-1])
        assert requests == 300 and errors == 0
        assert 0.0 <= offload <= 100.0
    assert any(float(row[3].rstrip("%")) > 0 for row in table), "some requests reached the cloud workers"
    assert "Traceback" not in result.stderr
    port = int(re.search(r"private broker on mqtt://127\.0\.0\.1:(\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the demo's broker is still running"
