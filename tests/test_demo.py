"""`make demo ARGS=--quick` as a user runs it (`fedge-cloud fl loop --quick`), with one phase: every part, a report.

The first run trains the cloud model into an empty store (as a fresh clone's first `make demo` does);
then a private broker with the fleet's ACL, the coordinator with 2 workers, one agent per shipped
profile, a federated round on real SuperNodes and a release through the canary and shadow gate.
Ctrl-C (SIGINT to the whole process group, as a terminal sends it) stops all of it at any point.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.exit_codes import ExitCode
from cloud.federated.loop import SHIPPED_PROFILES, LoopPlan, plan_devices
from cloud.local.mosquitto import free_port
from tests.mqtt_helpers import eventually

FEDGE_CLOUD = str(Path(sys.executable).with_name("fedge-cloud"))
DEVICES = {d.device_id: d for d in plan_devices(LoopPlan())}


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Empty at first: the first demo in this module trains the cloud model into it, the next one reuses it."""
    return tmp_path_factory.mktemp("demo") / "store"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _leftovers() -> list[str]:
    """Processes that still run with a fedge-loop- folder in their command line: Flower's, Mosquitto."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    return [c for c in map(_cmdline, pids) if "fedge-loop-" in c]


def _in_group(group: int) -> list[str]:
    """Command lines of the processes in the demo's process group (its worker processes among them)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == group:  # the fields after "(comm)": state, ppid, pgrp
            found.append(_cmdline(int(pid)))
    return found


def _broker_port(log: str) -> int:
    found = re.search(r"private broker on mqtt://127\.0\.0\.1:(\d+)", log)
    assert found, log[-3000:]
    return int(found.group(1))


def _closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _start(store: Path, out: Path, log: Path, dashboard: int) -> subprocess.Popen[str]:
    with log.open("w") as sink:  # a file, not a pipe: nobody reads a pipe while the loop runs, and a full one blocks it
        return subprocess.Popen([FEDGE_CLOUD, "fl", "loop", "--quick", "--phases", "1", "--store", str(store),
                                 "--out", str(out), "--dashboard", str(dashboard)],
                                stdout=sink, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_quick_demo_runs_every_part_writes_its_report_and_leaves_nothing_running(demo_store: Path,
                                                                                 tmp_path: Path) -> None:
    out, log, port = tmp_path / "demo-report", tmp_path / "demo.log", free_port()
    demo = _start(demo_store, out, log, port)
    seen: dict[str, Any] = {"devices": set(), "rounds": 0}

    def watched() -> bool:  # meanwhile the coordinator's dashboard shows the fleet, then the round
        try:
            state = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2).read())
        except OSError:
            return demo.poll() is not None  # not up yet, or the demo is over
        seen["devices"] |= {d["id"] for d in state["devices"] if d["online"]}
        seen["rounds"] = max(seen["rounds"], len(state["rounds"]))
        return demo.poll() is not None or (len(seen["devices"]) == len(DEVICES) and seen["rounds"] >= 1)

    try:
        assert eventually(watched, timeout=600)
    finally:
        demo.wait(timeout=900)
    text = log.read_text()
    assert demo.returncode == ExitCode.OK, text[-6000:]
    assert "Traceback" not in text, text[-6000:]
    assert seen["devices"] == set(DEVICES) and seen["rounds"] >= 1, seen
    assert (demo_store / "mnist1d" / "mnist1d-cloud").is_dir()  # trained into the user's store, reused next time

    report = json.loads((out / "loop.json").read_text())
    assert {d["profile"] for d in report["devices"]} == set(SHIPPED_PROFILES)
    assert [p["phase"] for p in report["phases"]] == [0, 1]
    for phase in report["phases"]:
        assert phase["errors"] == 0 and phase["requests"] == len(DEVICES) * 300, phase
        assert set(phase["devices"]) == set(DEVICES)
        assert 0 < phase["offload_rate"] < 1 and 0.3 < phase["accuracy"] <= 1, phase
    trainers = sum(d.trains for d in DEVICES.values())
    trained = report["rounds"][1]
    assert [r["round"] for r in report["rounds"]] == [0, 1], report["rounds"]
    # a device with fewer kept samples than federated.min_samples declines (the 5 %-budget gateway, in a short run)
    assert trained["participants"] >= 1 and trained["participants"] + trained["declined"] == trainers, trained
    release = report["rounds"][1]["release"]
    outcomes = {"promoted": {"2"}, "rolled back": {"1"}, "not published": {"1"}}  # each with what then serves
    outcome = next((o for o in outcomes if o in release), None)
    assert outcome, release  # a release, or why none serves
    assert set(report["phases"][1]["versions"].values()) == outcomes[outcome], (release, report["phases"][1])
    if outcome != "not published":  # the rollout's history: staged, the canary, then promoted or rolled back
        assert {e["state"] for e in report["rollouts"] if e["version"] == 2} >= {"staged", "canary"}, report

    markdown = (out / "report.md").read_text()
    first, last = report["phases"][0]["offload_rate"], report["phases"][-1]["offload_rate"]
    if outcome == "promoted":  # the verdict, or why not
        assert last < first if "The edge offloads less" in markdown else "did not fall" in markdown, markdown[:1200]
    else:
        assert "No federated release was promoted" in markdown and "did not fall" in markdown, markdown[:1200]
    for device in DEVICES.values():  # the per-device table: each device with its shipped profile
        assert re.search(rf"^\| {re.escape(device.device_id)} \| {device.profile} \|", markdown, re.MULTILINE), markdown
    for plot in ("rounds.png", "latency.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in markdown
    assert _closed(_broker_port(text)), "the demo's broker is still running"
    assert eventually(lambda: not _leftovers() and not _in_group(demo.pid), timeout=10), (_leftovers(),
                                                                                          _in_group(demo.pid))


def test_ctrl_c_during_the_federated_round_stops_every_process_and_reports_what_ran(demo_store: Path,
                                                                                   tmp_path: Path) -> None:
    out, log = tmp_path / "demo-report", tmp_path / "demo.log"
    demo = _start(demo_store, out, log, free_port())
    try:
        assert eventually(lambda: demo.poll() is not None or "round 0:" in log.read_text(), timeout=600), \
            log.read_text()[-3000:]
        assert demo.poll() is None, log.read_text()[-3000:]  # round 0 is judged, round 1 trains on the SuperNodes
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    text = log.read_text()
    assert demo.returncode == ExitCode.INTERRUPTED, text[-4000:]
    assert "Traceback" not in text, text[-6000:]
    assert "started a new one" not in text, text[-4000:]  # the workers heard Ctrl-C too, and were not restarted
    report = json.loads((out / "loop.json").read_text())
    assert report["interrupted"] and [p["phase"] for p in report["phases"]] == [0], report["phases"]
    assert "Interrupted" in (out / "report.md").read_text()
    assert _closed(_broker_port(text))
    assert eventually(lambda: not _leftovers() and not _in_group(demo.pid), timeout=10), (_leftovers(),
                                                                                          _in_group(demo.pid))
