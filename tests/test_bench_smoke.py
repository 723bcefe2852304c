"""Every benchmark runs in --quick mode and writes a result in the one shared shape."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS

RECORDS = {"microbatch"}  # kept as a record: serving_peers states the batching goals (issue 14)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_mode_writes_its_result(name: str, tmp_path: Path) -> None:
    module = importlib.import_module(f"bench.{name}")
    path = module.main(["--quick", "--results-dir", str(tmp_path)])
    doc = json.loads(Path(path).read_text())
    assert doc["bench"] == name
    assert {"when", "env", "params", "metrics", "goals"} <= doc.keys()
    assert bool(doc["goals"]) is (name not in RECORDS), "a benchmark states at least one goal; a record none"
    for name, goal in doc["goals"].items():
        assert goal["op"] in ("<=", ">=") and isinstance(goal["met"], bool), name
        # a ratio over an empty or failed measurement is NaN or infinite, and would read as "not met" forever
        assert math.isfinite(goal["value"]) and math.isfinite(goal["target"]), (name, goal)
    assert doc["metrics"] and all(math.isfinite(v) for v in numbers_in(doc["metrics"])), doc["metrics"]
    assert {"onnxruntime", "numpy"} <= doc["env"]["versions"].keys()


def numbers_in(tree: object) -> list[float]:
    """Every number in a JSON tree (booleans are not measurements)."""
    if isinstance(tree, dict):
        return [n for value in tree.values() for n in numbers_in(value)]
    if isinstance(tree, list):
        return [n for value in tree for n in numbers_in(value)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []
