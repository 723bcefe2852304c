"""Shared fixtures: a real Mosquitto per test (plain, TLS, password + ACL) on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.fleet.access import Fleet, acl_text
from cloud.local.mosquitto import Mosquitto, MosquittoError, ServerTls, find_binary
from tests.tls_certs import CertSet, make_certs

# The fleet the ACL tests use, its ACL written by the same code as `fedge-cloud acl`.
FLEET = Fleet(devices=["device-a", "device-b"], workers=["worker"], coordinators=["coordinator"])
ACL = acl_text(FLEET)
USERS = {"device-a": "pw-a", "device-b": "pw-b", "worker": "pw-worker", "coordinator": "pw-coordinator"}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Without Mosquitto the suite cannot test anything real: fail loudly, never skip."""
    try:
        find_binary()
    except MosquittoError as exc:
        pytest.exit(f"fedge tests need a real broker: {exc}", returncode=1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain broker on a free port, stopped by PID after the test."""
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@dataclass(frozen=True)
class TlsBroker:
    broker: Mosquitto
    certs: CertSet


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    """A TLS-only broker with a throwaway CA; client certificates are required."""
    certs = make_certs(tmp_path / "certs")
    tls = ServerTls(certs.ca_file, certs.server_cert, certs.server_key, require_certificate=True)
    with Mosquitto(tmp_path / "broker", tls=tls) as running:
        yield TlsBroker(running, certs)


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker with a password file and the fleet ACL above; anonymous clients are refused."""
    with Mosquitto(tmp_path / "broker", users=USERS, acl=ACL) as running:
        yield running
