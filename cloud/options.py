"""Command-line options shared by the coordinator's commands: the model store, the registry and the broker.

A command that talks to a secured broker needs the same things a device
profile's ``broker`` block holds; the password is referenced (an environment
variable or a file), never typed on the command line where ``ps`` shows it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from agent.config.problems import ConfigError
from agent.config.secrets import password_from
from agent.exit_codes import ExitCode
from agent.model_store import ModelStore
from agent.mqtt_client import BrokerSettings, TlsFiles
from cloud.registry import Registry, RegistryUnavailable, default_registry, existing_registry
from cloud.store import default_store_root


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, default=None,
                        help="model store directory (default: $FEDGE_STORE or ./store)")


def store_of(args: argparse.Namespace) -> ModelStore:
    return ModelStore(args.store or default_store_root())


def add_registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=None, metavar="URL",
                        help="registry: a SQLite file path, sqlite:///path or postgresql://user@host/db"
                        " (default: $FEDGE_REGISTRY or ./var/registry.db)")


def refused(command: str, exc: Exception) -> ExitCode:
    """Say on stderr why ``command`` cannot go on; its exit code: 3 for a registry out of reach, else 2 (bad input)."""
    print(f"{command}: {exc}", file=sys.stderr)
    return ExitCode.UNAVAILABLE if isinstance(exc, RegistryUnavailable) else ExitCode.INVALID_INPUT


def existing_registry_or_exit(command: str, url: str | None, missing: str = "") -> Registry | ExitCode:
    """The registry ``--registry`` names, for a command that only reads it; else the exit code, having said why.

    A registry nobody created yet is not made by looking (``missing`` says what that means for ``command``).
    """
    try:
        registry = existing_registry(url)
    except (ValueError, RegistryUnavailable) as exc:
        return refused(command, exc)
    if registry is None:
        print(f"{command}: no registry at {url or default_registry()}{missing}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    return registry


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


def broker_settings(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> BrokerSettings:
    """The broker the flags describe; ValueError naming the flag when they do not add up."""
    if (args.cert_file is None) != (args.key_file is None):
        raise ValueError("mutual TLS needs both --cert-file and --key-file")
    if (args.password_env or args.password_file) and args.username is None:
        raise ValueError("a password needs --username")
    for flag, path in (("--ca-file", args.ca_file), ("--cert-file", args.cert_file), ("--key-file", args.key_file)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
    try:
        password = password_from(args.password_env, str(args.password_file) if args.password_file else None,
                                 "broker", Path, env)
    except ConfigError as exc:  # its problems name config keys; say which flag instead
        raise ValueError("; ".join(f"--{p.path.rsplit('.', 1)[-1].replace('_', '-')}: {p.message}"
                                   for p in exc.problems)) from None
    files = TlsFiles(args.ca_file, args.cert_file, args.key_file)
    broker = BrokerSettings.from_url(args.broker, BrokerSettings(tls=files, username=args.username, password=password))
    if broker.tls is None and (args.ca_file is not None or args.cert_file is not None):  # either implies TLS
        broker = replace(broker, tls=files)
    return broker
