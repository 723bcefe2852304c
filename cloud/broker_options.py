"""Broker flags for the coordinator's MQTT commands: where the broker is, TLS files, user and password.

A command that talks to a secured broker needs the same things a device
profile's ``broker`` block holds; the password is referenced (an environment
variable or a file), never typed on the command line where ``ps`` shows it.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.mqtt_client import BrokerAddress, TlsFiles
from agent.profile.problems import ProfileError
from agent.profile.resolve import password_from


@dataclass(frozen=True)
class BrokerConnection:
    """Everything ``agent.mqtt_client.new_client``/``connect`` need, from the flags."""

    host: str
    port: int
    tls: TlsFiles | None
    username: str | None
    password: str | None


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    """``--broker``, ``--username``, ``--password-env``/``--password-file``, ``--ca-file``, ``--cert-file``, ``--key-file``."""
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                        help="broker URL; mqtts:// connects with TLS (default mqtt://127.0.0.1:1883)")
    parser.add_argument("--username", default=None, help="MQTT user (fedge-cloud acl's coordinator user)")
    password = parser.add_mutually_exclusive_group()
    password.add_argument("--password-env", default=None, metavar="VAR",
                          help="environment variable holding the MQTT password")
    password.add_argument("--password-file", type=Path, default=None, metavar="FILE",
                          help="file holding the MQTT password (fedge-cloud acl writes secrets/<user>)")
    parser.add_argument("--ca-file", type=Path, default=None,
                        help="CA that signed the broker's certificate (default: the system's); implies TLS")
    parser.add_argument("--cert-file", type=Path, default=None, help="client certificate for mutual TLS")
    parser.add_argument("--key-file", type=Path, default=None,
                        help="private key of --cert-file (the TLS client key, not a release key)")


def broker_connection(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> BrokerConnection:
    """The connection the flags describe; ValueError naming the flag when they do not add up."""
    address = BrokerAddress.parse(args.broker)
    if (args.cert_file is None) != (args.key_file is None):
        raise ValueError("mutual TLS needs both --cert-file and --key-file")
    if (args.password_env or args.password_file) and args.username is None:
        raise ValueError("a password needs --username")
    for flag, path in (("--ca-file", args.ca_file), ("--cert-file", args.cert_file), ("--key-file", args.key_file)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
    use_tls = address.tls or args.ca_file is not None or args.cert_file is not None
    tls = TlsFiles(args.ca_file, args.cert_file, args.key_file) if use_tls else None
    try:
        password = password_from(args.password_env, str(args.password_file) if args.password_file else None,
                                 "broker", Path, env)
    except ProfileError as exc:  # its problems name profile keys; say which flag instead
        raise ValueError("; ".join(f"--{p.path.rsplit('.', 1)[-1].replace('_', '-')}: {p.message}"
                                   for p in exc.problems)) from None
    return BrokerConnection(address.host, address.port, tls, args.username, password)


def instance_name() -> str:
    """``host-pid``: this process's name on the broker.

    Two coordinators (or a rollout and its retry) must never share a client id, or the broker hands
    one's session to the other and disconnects it.
    """
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', socket.gethostname())}-{os.getpid()}"


def client_id(role: str) -> str:
    """``role-host-pid``."""
    return f"{role}-{instance_name()}"
