"""The one place a paho-mqtt v5 client is made and connected.

Agents, cloud workers, benchmarks and tests all connect through here, so they
share the socket settings the raw_mqtt benchmark found fastest (TCP_NODELAY on,
because a QoS 1 round trip otherwise stalls on Nagle plus delayed ACKs) and the
one-pass property decoder of agent/protocol/properties.py.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.protocol import properties as wire_properties

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.profile.connectivity import TlsConfig


class BrokerConnectError(Exception):
    """The broker could not be reached or refused us; the message says which and why."""


@dataclass(frozen=True)
class TlsFiles:
    """TLS settings: the CA to trust (None: the system's), a client certificate if the broker asks."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip the host name check (test rigs only)

    @classmethod
    def from_config(cls, tls: TlsConfig, resolve_path: Callable[[str], Path]) -> TlsFiles:
        """A profile's or serve config's ``tls`` section, its paths resolved by the file's own rule."""

        def path(p: str | None) -> Path | None:
            return resolve_path(p) if p else None

        return cls(path(tls.ca_file), path(tls.cert_file), path(tls.key_file), tls.insecure)


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, parsed from ``mqtt://host:port`` or ``mqtts://host:port``."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse a broker URL; a bare ``host[:port]`` means plain MQTT."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} names no host")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"broker URL {url!r} has a bad port") from None
        return cls(parts.hostname, port, tls)


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(
    client_id: str,
    *,
    nodelay: bool = True,
    tls: TlsFiles | None = None,
    username: str | None = None,
    password: str | None = None,
) -> mqtt.Client:
    """A paho v5 client on the v2 callback API, configured but not yet connected."""
    wire_properties.install()  # incoming PUBLISH properties decoded in one pass (agent/protocol/properties.py)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.enable_logger()
    if nodelay:
        client.on_socket_open = _set_nodelay
    if tls is not None:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(tls.insecure)
    if username is not None:
        client.username_pw_set(username, password)
    return client


def connect(
    client: mqtt.Client,
    host: str,
    port: int,
    *,
    keepalive: int = 30,
    timeout: float = 10.0,
    clean_start: bool = True,
) -> None:
    """Connect and start the network loop; return once the broker said yes, raise otherwise.

    The CONNACK reason code decides: a refused connection is never reported as connected.
    """
    answered = threading.Event()
    outcome: dict[str, ReasonCode] = {}
    previous = client.on_connect

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        outcome["reason"] = reason
        answered.set()
        if previous is not None:
            previous(c, userdata, flags, reason, props)

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=keepalive, clean_start=clean_start)
    except (OSError, ssl.SSLError) as exc:
        client.on_connect = previous
        raise BrokerConnectError(f"cannot reach MQTT broker at {host}:{port}: {exc}") from None
    client.loop_start()
    ok = answered.wait(timeout)
    client.on_connect = previous
    reason = outcome.get("reason")
    if not ok or reason is None or reason.is_failure:
        client.loop_stop()
        client.disconnect()
        why = "no CONNACK within %.1f s" % timeout if reason is None else f"refused: {reason}"
        raise BrokerConnectError(f"MQTT broker at {host}:{port} {why}")


class Subscriptions:
    """Filters a client subscribes to on every (re)connect, and the broker's verdict on the first time.

    Messages that are not retained (heartbeats) sent before the SUBACK are missed, and an ACL may
    refuse a filter while the connection itself is accepted: ``confirm`` waits for the SUBACK and
    raises on a refusal instead of listening to nothing.
    """

    def __init__(self, client: mqtt.Client, filters: list[tuple[str, int]]) -> None:
        self.filters = filters
        self._answered = threading.Event()
        self._refused: ReasonCode | None = None
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe

    def confirm(self, host: str, port: int, timeout: float, hint: str = "") -> None:
        """Return once the broker granted every filter; BrokerConnectError (with ``hint``) otherwise."""
        names = ", ".join(topic for topic, _ in self.filters)
        if not self._answered.wait(timeout):
            raise BrokerConnectError(f"MQTT broker at {host}:{port} did not confirm the subscription to {names}"
                                     f" within {timeout:g} s")
        if self._refused is not None:
            raise BrokerConnectError(f"MQTT broker at {host}:{port} refused the subscription to {names}:"
                                     f" {self._refused}{'; ' + hint if hint else ''}")

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.filters)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _props: Any) -> None:
        self._refused = next((r for r in reasons if r.is_failure), None)
        self._answered.set()
