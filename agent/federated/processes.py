"""Flower's processes, started and stopped by PID: a SuperNode or SuperLink and the children it starts.

Flower's servers start helpers of their own (a SuperExec, a process per ClientApp
or ServerApp run). Each is started in a new session and stopped by walking its
descendants in /proc: SIGTERM first (a SuperNode told so leaves the SuperLink at
once; SIGKILL would leave the SuperLink waiting two heartbeats, about a minute),
SIGKILL for whatever lingers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class MissingFlower(FileNotFoundError):
    """A Flower command is not installed here; the message says how to install it."""


def flower_command(name: str) -> str:
    """The path of a Flower console script, next to this Python first (a venv need not be on PATH)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise MissingFlower(f"{name} is not installed: federated rounds need Flower here (pip install 'fedge[fl]')")
    return found


def flower_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Flower's processes run in: this Python's scripts first on PATH, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.update(extra or {})
    return env


def start(argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else flower_environment(), start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, then theirs), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process and everything it started; SIGKILL what is still there after ``timeout``."""
    if process.poll() is not None:
        return
    tree = [process.pid, *descendants(process.pid)]
    for pid in tree:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    for pid in tree:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(5)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
