"""The three servers as processes the bench starts and stops by PID: fedge-agent run, KServe, Triton.

Each serves every benchmark model from the same ONNX files under the same
model names, with the same ONNX Runtime session options (intra-op threads as
given, one inter-op thread, sequential, all graph optimisations). Output goes
to a log file per server; a server that exits or is not ready in time is
reported with that log's last lines. ``started`` registers the stop (SIGTERM to
the whole tree, SIGKILL after 10 s) before waiting, so an error or Ctrl-C
during start-up still stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml

from agent.process_tree import descendants, stop
from bench.cloud_rig import cpu_seconds
from cloud.local.mosquitto import free_port

PEERS_DIR = Path(__file__).resolve().parent
REPOSITORY = PEERS_DIR.parents[1]  # on the peers' PYTHONPATH: they open sessions with agent.session, as fedge does
FEDGE_AGENT = str(Path(sys.executable).with_name("fedge-agent"))
READY_TIMEOUT_S = 120.0


class ServerFailed(Exception):
    """A server did not start; the message says which and quotes its log."""


@dataclass(frozen=True)
class Served:
    """One model as every server serves it."""

    name: str  # the OIP model name (fedge: the task)
    file: Path
    store_name: str  # fedge's model store entry for it
    shape: list[int]  # the input shape, batch first (-1)
    max_batch: int  # most rows the batching servers (fedge, Triton) run together


@dataclass
class Server:
    """A running server process: its HTTP port, log, and the CPU its process tree has used."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def cpu_s(self) -> float:
        return sum(cpu_seconds(pid) for pid in [self.process.pid, *descendants(self.process.pid)])

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n    ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def started(stack: ExitStack, name: str, argv: list[str], port: int, log: Path,
            env: dict[str, str] | None = None) -> Server:
    """Start ``argv`` with its output in ``log``; its stop is on ``stack`` before this returns."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})})
    stack.callback(stop, process)
    return Server(name, port, process, log)


def wait_ready(server: Server, models: list[Served], timeout: float = READY_TIMEOUT_S) -> None:
    """Until the server and each model answer ready (``/v2/health/ready``, ``/v2/models/<m>/ready``)."""
    deadline = time.monotonic() + timeout
    paths = ["/v2/health/ready", *(f"/v2/models/{m.name}/ready" for m in models)]
    while paths:
        if server.process.poll() is not None:
            raise ServerFailed(f"{server.name} exited with {server.process.returncode} before it was ready;"
                               f" its log ({server.log}):\n    {server.log_tail()}")
        if time.monotonic() > deadline:
            raise ServerFailed(f"{server.name} was not ready within {timeout:g} s; its log:\n    {server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{paths[0]}", timeout=2) as resp:
                if resp.status == 200:
                    paths.pop(0)
                    continue
        except OSError:
            pass
        time.sleep(0.2)


def fedge_profile(work: Path, port: int, models: list[Served], threads: int, delay_ms: float) -> Path:
    """Local answers only: no offload section, so no broker connection; no sample store."""
    path = work / "fedge-profile.yaml"
    path.write_text(yaml.safe_dump({
        "device": {"id": "serving-peers", "kind": "bench"},
        "hardware": {"execution_providers": [{"type": "cpu"}], "intra_op_threads": threads, "inter_op_threads": 1},
        "models": {m.name: {"name": m.store_name, "input": {"name": "input", "shape": m.shape},
                            "batching": {"max_batch_size": m.max_batch, "max_queue_delay_ms": delay_ms}}
                   for m in models},
        "api": {"host": "127.0.0.1", "port": port},
        "storage": {"directory": str(work / "fedge-state"), "samples": {"enabled": False}},
        "federated": {"enabled": False},
        "logging": {"level": "WARNING"},
    }))
    return path


def start_fedge(stack: ExitStack, work: Path, store: Path, models: list[Served], threads: int,
                delay_ms: float) -> Server:
    port = free_port()
    profile = fedge_profile(work, port, models, threads, delay_ms)
    return started(stack, "fedge", [FEDGE_AGENT, "run", "--profile", str(profile), "--store", str(store)], port,
                   work / "fedge.log")


def _serve_args(models: list[Served]) -> list[str]:
    return [arg for m in models for arg in ("--serve", f"{m.name}={m.file}")]


def start_kserve(stack: ExitStack, work: Path, python: Path, models: list[Served], threads: int) -> Server:
    port = free_port()
    argv = [str(python), str(PEERS_DIR / "kserve_server.py"), "--listen-port", str(port),
            "--intra-op-threads", str(threads), *_serve_args(models)]
    return started(stack, "kserve", argv, port, work / "kserve.log", env={"PYTHONPATH": str(REPOSITORY)})


def start_triton(stack: ExitStack, work: Path, python: Path, libdir: str, models: list[Served], threads: int,
                 delay_us: int) -> Server:
    """PyTriton's backend stub links libpython: the interpreter's own library directory goes first."""
    port = free_port()
    argv = [str(python), str(PEERS_DIR / "triton_server.py"), "--listen-port", str(port),
            "--intra-op-threads", str(threads), "--delay-us", str(delay_us), "--workspace",
            str(work / "triton-workspace"), *_serve_args(models),
            *(arg for m in models for arg in ("--max-batch", f"{m.name}={m.max_batch}"))]
    library_path = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    return started(stack, "triton", argv, port, work / "triton.log", env={"LD_LIBRARY_PATH": library_path,
                                                                         "PYTHONPATH": str(REPOSITORY)})
