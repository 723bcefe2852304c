"""The peers' virtual environment: made once with ``python -m venv`` and pip, then reused.

Keyed by a hash of the requirement list and the interpreter, so a changed pin
makes a new one instead of reusing a stale one: ``~/.cache/fedge/peers-venv-<hash>``,
where a directory without the ready stamp (an interrupted install) is made
again. ``FEDGE_PEERS_VENV`` names another directory: made there if it is
absent or empty, used as it is if it already has the server packages, never
deleted unless it is an interrupted install of this module's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

STAMP, PARTIAL = ".fedge-peers-ready", ".fedge-peers-partial"  # made whole; being made (or interrupted) by us
PROGRESS = ("Collecting", "Downloading", "Installing", "Successfully")
#: What the peers' script import, and what their version report names (onnxruntime pinned to fedge's own,
#: so every server runs the same build of the same session).
SERVER_PACKAGES = ("kserve", "nvidia-pytriton", "tritonclient", "onnxruntime", "numpy")


class PeersUnavailable(Exception):
    """The peers' environment could not be made; the message says why and what to do."""


@dataclass(frozen=True)
class PeersVenv:
    """A ready environment: its interpreter and how long getting it took."""

    directory: Path
    seconds: float
    created: bool

    @property
    def python(self) -> Path:
        return self.directory / "bin" / "python"


def requirements() -> list[str]:
    return ["kserve==0.21.*", "nvidia-pytriton==0.7.*", "tritonclient[http]",
            f"onnxruntime=={metadata.version('onnxruntime')}", "numpy"]


def default_directory(reqs: list[str]) -> Path:
    key = hashlib.sha256("\n".join([sys.version, *reqs]).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "fedge" / f"peers-venv-{key}"


def ensure() -> PeersVenv:
    """The environment, made first if it is not there (30 s to minutes: pip installs ~750 MB, mostly Triton)."""
    reqs = requirements()
    override = os.environ.get("FEDGE_PEERS_VENV")
    target = Path(override).expanduser() if override else default_directory(reqs)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once: the second waits and then reuses the first's
        if (target / STAMP).is_file():
            return PeersVenv(target, time.perf_counter() - started, created=False)
        if override and target.exists() and any(target.iterdir()) and not (target / PARTIAL).is_file():
            _check_given(target)
            return PeersVenv(target, time.perf_counter() - started, created=False)
        print(f"serving_peers: creating the peers' environment {target} ({' '.join(reqs)}); 30 s to a few"
              " minutes, once", flush=True)
        shutil.rmtree(target, ignore_errors=True)  # an interrupted install of ours (a given directory is empty)
        _run([sys.executable, "-m", "venv", str(target)], "python -m venv")
        (target / PARTIAL).touch()
        _run([str(target / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", "--upgrade",
              "pip"], "pip install --upgrade pip")
        _run([str(target / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", *reqs],
             "pip install")
        (target / STAMP).write_text("\n".join(reqs) + "\n")
        (target / PARTIAL).unlink()
    seconds = time.perf_counter() - started
    print(f"serving_peers: peers' environment ready in {seconds:.0f} s", flush=True)
    return PeersVenv(target, seconds, created=True)


def _check_given(target: Path) -> None:
    """A directory named by FEDGE_PEERS_VENV that is not ours: usable only if it has every server package."""
    python = target / "bin" / "python"
    if not python.is_file():
        raise PeersUnavailable(f"FEDGE_PEERS_VENV={target} is neither a virtual environment (no bin/python) nor"
                               " empty; name an empty or absent directory to have it made there")
    missing = [d for d in SERVER_PACKAGES if d not in versions(python)]
    if missing:
        raise PeersUnavailable(f"FEDGE_PEERS_VENV={target} lacks {', '.join(missing)}; install"
                               f" {' '.join(requirements())} there, or name an empty or absent directory")


def _run(argv: list[str], what: str) -> None:
    """Run a step, echoing pip's progress lines; PeersUnavailable with the output's tail if it fails."""
    tail: deque[str] = deque(maxlen=25)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise PeersUnavailable(f"cannot run {what}: {exc}") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
        if line.lstrip().startswith(PROGRESS):
            print(f"  peers venv: {line.strip()[:150]}", flush=True)
    if proc.wait() != 0:
        raise PeersUnavailable(f"{what} failed (exit {proc.returncode}); its last lines:\n  " + "\n  ".join(tail)
                               + "\nThe peers need the package registry (pip) once; set FEDGE_PEERS_VENV to an"
                               " environment that has " + ", ".join(requirements()) + " to use it instead.")


def versions(python: Path) -> dict[str, str]:
    """The server packages' versions in the environment, read by its own interpreter."""
    probe = ("import json, importlib.metadata as m, sys\n"
             "out = {'python': sys.version.split()[0]}\n"
             f"for d in {list(SERVER_PACKAGES)!r}:\n"
             "    try: out[d] = m.version(d)\n"
             "    except m.PackageNotFoundError: pass\n"
             "print(json.dumps(out))")
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise PeersUnavailable(f"{python} cannot report its packages: {done.stderr.strip()[-500:]}")
    return dict(json.loads(done.stdout))


def libdir(python: Path) -> str:
    """The base interpreter's library directory, where its libpython is (PyTriton's backend stub needs it first)."""
    done = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise PeersUnavailable(f"{python} cannot report its LIBDIR: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()
