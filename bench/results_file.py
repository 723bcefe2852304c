"""The one shape every benchmark writes to ``bench/results/<name>.json``.

Machines are shared and noisy, so results are ratios against a baseline
measured in the same run; this module only records them, uniformly.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_VERSIONED = ("numpy", "onnxruntime", "paho-mqtt", "torch", "flwr", "onnx")


@dataclass(frozen=True)
class Goal:
    """A target a metric must meet: ``value <op> target``."""

    value: float
    op: Literal["<=", ">="]
    target: float

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "target": self.target, "value": self.value, "met": self.met}


def print_goals(bench: str, goals: dict[str, Goal]) -> None:
    """One line per goal on the terminal: its value, the target and whether it is met."""
    for name, goal in goals.items():
        print(f"{bench}: {name} = {goal.value} ({goal.op} {goal.target}: {'met' if goal.met else 'NOT met'})")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """CPU, Python and library versions, so a number can be traced to where it was measured."""
    versions = {}
    for dist in _VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
    }


def write_result(
    bench: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    goals: dict[str, Goal],
    *,
    results_dir: Path | None = None,
) -> Path:
    """Write one benchmark's result file and return its path."""
    out_dir = results_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "bench": bench,
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "env": environment(),
        "params": params,
        "metrics": metrics,
        "goals": {name: goal.as_dict() for name, goal in goals.items()},
    }
    path = out_dir / f"{bench}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def bench_arguments(name: str, doc: str | None, argv: list[str] | None,
                    quick_help: str = "a run of seconds, for the test suite's smoke test") -> argparse.Namespace:
    """The options every benchmark takes: ``--quick`` and ``--results-dir``."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where to write the result (default: bench/results/)")
    return parser.parse_args(argv)
