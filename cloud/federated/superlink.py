"""Flower's SuperLink as ``fedge-cloud fl serve`` runs it: started, watched, restarted and stopped by PID.

Always with ``--database``: without it a restarted SuperLink forgets its runs
and orphans the SuperNodes. A run is submitted with Flower's own ``flwr run``
on an app folder written here (its ``pyproject.toml`` names fedge's ServerApp
and ClientApp and carries the run's settings as its config), and followed with
``flwr ls``. Flower's runtime dependency installation is off: the ServerApp and
ClientApp are fedge's own, installed already.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import process_tree
from agent.federated import processes
from cloud.federated.settings import FederatedSettings

CONNECTION = "fedge"


class SuperLinkError(RuntimeError):
    """The SuperLink did not start, or Flower refused a run; the message says why (with its log's tail)."""


@dataclass(frozen=True)
class SuperLinkTls:
    """The SuperLink's certificate, key and the CA that signed it (SuperNodes trust that CA)."""

    certfile: Path
    keyfile: Path
    ca_certfile: Path


def _toml(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # a JSON string or number is a TOML basic string or number


def write_app(folder: Path, settings: FederatedSettings) -> Path:
    """The Flower app folder ``flwr run`` bundles: fedge's components, the run's settings as its config."""
    folder.mkdir(parents=True, exist_ok=True)
    client = "agent.federated.client_app:dp_app" if settings.dp_noise > 0 else "agent.federated.client_app:app"
    config = "\n".join(f"{key} = {_toml(value)}" for key, value in settings.to_run_config().items())
    (folder / "pyproject.toml").write_text(f"""# Written by fedge-cloud fl serve for run {settings.run}.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedge-federated"
version = "1.0.0"
description = "fedge federated fine-tuning"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedge"

[tool.flwr.app.components]
serverapp = "cloud.federated.server_app:app"
clientapp = "{client}"

[tool.flwr.app.config]
{config}
""")
    return folder


class SuperLink:
    """One SuperLink process with its state (database, log, ``flwr`` connection) under ``state_dir``."""

    def __init__(self, state_dir: Path, port: int, *, host: str = "0.0.0.0", tls: SuperLinkTls | None = None,
                 node_auth: bool = False) -> None:
        if node_auth and tls is None:
            raise ValueError("SuperNode authentication needs TLS: give the SuperLink a certificate and key")
        self.state_dir, self.port, self.host, self.tls, self.node_auth = state_dir, port, host, tls, node_auth
        self.log_file = state_dir / "superlink.log"
        self.home = state_dir / "flwr-home"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60.0) -> SuperLink:
        """Start it (if it is not running) and wait until its port answers; SuperLinkError with the log's tail otherwise."""
        if self.running:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [processes.flower_command("flower-superlink"), "--host", self.host, "--port", str(self.port),
                "--database", str(self.state_dir / "superlink.db"), "--disable-runtime-dependency-installation"]
        if self.tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-certfile", str(self.tls.certfile), "--ssl-keyfile", str(self.tls.keyfile),
                     "--ssl-ca-certfile", str(self.tls.ca_certfile)]
        if self.node_auth:
            argv.append("--enable-supernode-auth")
        self._write_connection()
        self._process = processes.start(argv, self.log_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SuperLinkError(f"flower-superlink exited with {self._process.returncode}: {self.log_tail()}")
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise SuperLinkError(f"flower-superlink did not open port {self.port} within {timeout:g} s: {self.log_tail()}")

    def stop(self) -> None:
        if self._process is not None:
            process_tree.stop(self._process)
        self._process = None

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.is_file() else ""
        return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"

    def _write_connection(self) -> None:
        """``$FLWR_HOME/config.toml`` naming this SuperLink, for ``flwr run`` and ``flwr ls``."""
        self.home.mkdir(parents=True, exist_ok=True)
        security = "insecure = true" if self.tls is None else f"root-certificates = {_toml(str(self.tls.ca_certfile))}"
        (self.home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                               f'address = "{self.address}"\n{security}\n')

    def _flwr(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run a ``flwr`` command against this SuperLink with ``--format json``; its JSON answer."""
        argv = [processes.flower_command("flwr"), *args, "--format", "json"]
        env = processes.flower_environment({"FLWR_HOME": str(self.home)})
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise SuperLinkError(f"flwr {args[0]} did not answer within {timeout:g} s") from None
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise SuperLinkError(f"flwr {args[0]} failed ({done.returncode}): {(done.stdout + done.stderr)[-800:]}"
                                 ) from None
        if not isinstance(answer, dict) or not answer.get("success", False):
            raise SuperLinkError(f"flwr {args[0]} failed: {answer}")
        return answer

    def submit(self, app: Path) -> int:
        """Submit the app as a new run; Flower's run id."""
        return int(self._flwr("run", str(app), CONNECTION)["run-id"])

    def register_node(self, public_key: Path) -> None:
        """Let the SuperNode holding this key's private half join (``--enable-supernode-auth``); kept in the database."""
        try:
            self._flwr("supernode", "register", str(public_key), CONNECTION)
        except SuperLinkError as exc:
            if "already" not in str(exc).lower():
                raise

    def run_status(self, run_id: int) -> str:
        """Flower's status of a run, e.g. ``running``, ``finished:completed``, ``finished:failed``."""
        answer = self._flwr("ls", CONNECTION, "--run-id", str(run_id))
        runs = answer.get("runs") or []
        if not runs:
            return "unknown"
        return str(runs[0].get("status", "unknown"))

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink counts as online now."""
        answer = self._flwr("supernode", "list", CONNECTION)
        return sum(1 for node in answer.get("nodes") or [] if node.get("status") == "online")

    def stop_run(self, run_id: int) -> None:
        with contextlib.suppress(SuperLinkError):  # already finished, or the SuperLink goes away with it
            self._flwr("stop", str(run_id), CONNECTION, timeout=20)
