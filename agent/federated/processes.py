"""Flower's processes: where its commands are, the environment they run in, and starting one.

Flower's servers start helpers of their own (a SuperExec, a process per ClientApp
or ServerApp run); each is started in a new session and stopped with its whole
tree by ``agent.process_tree.stop``: SIGTERM first (a SuperNode told so leaves the
SuperLink at once; SIGKILL would leave the SuperLink waiting two heartbeats, about
a minute), SIGKILL for whatever lingers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
