"""Every benchmark runs in --quick mode and writes a result in the one shared shape."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_mode_writes_its_result(name: str, tmp_path: Path) -> None:
    module = importlib.import_module(f"bench.{name}")
    path = module.main(["--quick", "--results-dir", str(tmp_path)])
    doc = json.loads(Path(path).read_text())
    assert doc["bench"] == name
    assert {"when", "env", "params", "metrics", "goals"} <= doc.keys()
    assert doc["goals"], "a benchmark states at least one goal"
    for goal in doc["goals"].values():
        assert goal["op"] in ("<=", ">=") and isinstance(goal["value"], (int, float))
        assert goal["met"] == (goal["value"] <= goal["target"] if goal["op"] == "<=" else goal["value"] >= goal["target"])
