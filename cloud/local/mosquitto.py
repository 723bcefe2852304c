"""A private Mosquitto broker: generated config, free port, stopped by PID.

Tests, benchmarks and ``make demo`` start their own broker with this, never
one already running on the machine. Its password file is written by the same
code as ``fedge-cloud acl``'s (cloud/fleet/passwords.py).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from agent.mqtt_client import BrokerSettings
from cloud.fleet.passwords import write_password_file

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; fedge runs on 3.10 too


INSTALL_HINT = "sudo apt-get install -y mosquitto mosquitto-clients"


class MosquittoError(RuntimeError):
    """The broker binary is missing, or the broker would not start; the message says which."""


@dataclass(frozen=True)
class ServerTls:
    """The broker side of TLS: its CA, certificate and key, and whether clients must show one."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


def find_binary() -> str:
    """Path of the mosquitto binary, or an error saying how to install it."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise MosquittoError(f"the mosquitto broker is not installed; install it with: {INSTALL_HINT}")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    """One private broker on 127.0.0.1. ``start``, ``stop`` (by PID), ``kill`` and ``restart`` on the same port."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        tls: ServerTls | None = None,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        nodelay: bool = True,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fedge-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.users = dict(users or {})
        self.acl = acl
        self.nodelay = nodelay
        self.binary = find_binary()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def settings(self) -> BrokerSettings:
        """How a client reaches this broker (no TLS files or credentials: add them with dataclasses.replace)."""
        return BrokerSettings(self.host, self.port)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def config_text(self) -> str:
        """The generated mosquitto.conf: one listener, no persistence, a log file."""
        lines = [
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"set_tcp_nodelay {'true' if self.nodelay else 'false'}",
            "max_queued_messages 10000",
            f"listener {self.port} {self.host}",
        ]
        if self.users:
            write_password_file(self.workdir / "passwords", self.users)
            lines += ["allow_anonymous false", f"password_file {self.workdir / 'passwords'}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            (self.workdir / "acl").write_text(self.acl)
            lines.append(f"acl_file {self.workdir / 'acl'}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> Self:
        """Start the broker and wait until its port accepts connections."""
        if self.running():
            return self
        config = self.workdir / "mosquitto.conf"
        config.write_text(self.config_text())
        self._process = subprocess.Popen(
            [self.binary, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise MosquittoError(f"mosquitto exited with {self._process.returncode} on port {self.port}: {self._output()}")
            if _port_open(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise MosquittoError(f"mosquitto did not open port {self.port} within {timeout:.0f} s: {self._output()}")

    def _output(self) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        if self._process is not None and self._process.stderr is not None and self._process.poll() is not None:
            text += self._process.stderr.read().decode(errors="replace")
        return text.strip()[-2000:] or "(no output)"

    def _signal(self, sig: signal.Signals, wait: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stderr is not None:
            process.stderr.close()
        self._process = None

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers."""
        self._signal(signal.SIGTERM, 5.0)

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would: clients see the connection drop."""
        self._signal(signal.SIGKILL, 5.0)

    def restart(self, timeout: float = 10.0) -> Mosquitto:
        """Kill and start again on the same port (clients reconnect to the same address)."""
        self.kill()
        deadline = time.monotonic() + timeout
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
