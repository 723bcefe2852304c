"""The one place a paho-mqtt v5 client is made and connected.

Agents, cloud workers, benchmarks and tests all connect through here, so they
share the socket settings the raw_mqtt benchmark found fastest (TCP_NODELAY on,
because a QoS 1 round trip otherwise stalls on Nagle plus delayed ACKs) and the
one-pass property decoder of agent/protocol/properties.py.

paho retries a lost or failed connection in its network thread and tells
``on_connect_fail`` nothing about why; clients made here say why once per
outage (``connect_failure``) instead of paho's reasonless ERROR per retry.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.protocol import properties as wire_properties

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.config.broker import TlsConfig

log = logging.getLogger(__name__)
PAHO_LOG = logging.getLogger("paho.mqtt.client")
# paho's loop logs this at ERROR each time it goes round without a socket: once after every clean
# disconnect (its thread outlives the DISCONNECT by one turn) and once per failed reconnect. Neither
# says anything: clients made here report failed connections themselves, with the reason.
PAHO_NO_SOCKET = "Client is not connected"


class BrokerConnectError(Exception):
    """The broker could not be reached or refused us; the message says which and why."""


class TlsFileError(OSError):
    """A TLS file of the settings is missing, unreadable or not usable; the message names it."""


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
class BrokerSettings:
    """Everything needed to reach a broker: the one broker type of agents, workers and cloud commands."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: TlsFiles | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    @classmethod
    def from_url(cls, url: str, base: BrokerSettings | None = None) -> BrokerSettings:
        """``base`` (credentials, TLS files, keepalive) moved to ``mqtt://host:port`` or ``mqtts://host:port``.

        A bare ``host[:port]`` means plain MQTT. The scheme is the user's explicit choice, so it wins over
        ``base``'s TLS both ways: mqtts:// uses ``base``'s TLS files (the system's CAs if none), mqtt:// none.
        ValueError naming the URL when it is not one.
        """
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
        base = base or cls()
        return replace(base, host=parts.hostname, port=port, tls=(base.tls or TlsFiles()) if tls else None)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class _Client(mqtt.Client):
    """paho's client, keeping why the last connection attempt failed (paho's on_connect_fail is not told)."""

    last_connect_error: OSError | None = None
    outage_reported = False

    def reconnect(self) -> MQTTErrorCode:
        try:
            done = super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise
        if self.outage_reported:  # whoever read "cannot reach" learns the outage is over
            log.info("reached MQTT broker %s:%s again", self.host, self.port)
        self.outage_reported = False  # the broker answered: the next failure starts a new outage
        return done


def connect_failure(exc: BaseException | None) -> str:
    """Why a connection attempt failed, in words a user can act on."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on that port?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return "reason unknown"


def _report_connect_fail(client: mqtt.Client, _userdata: Any) -> None:
    """paho's on_connect_fail (background connects only; it retries with backoff): one warning per outage."""
    if not isinstance(client, _Client) or client.outage_reported:
        return
    client.outage_reported = True
    log.warning("cannot reach MQTT broker %s:%s: %s; retrying in the background", client.host, client.port,
                connect_failure(client.last_connect_error))


def _not_paho_no_socket(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(PAHO_NO_SOCKET))


def _set_tls(client: mqtt.Client, tls: TlsFiles) -> None:
    """``tls_set`` with each file checked first: ssl's own errors do not say which file is missing."""
    files = {"CA file": tls.ca_file, "client certificate": tls.cert_file, "client key": tls.key_file}
    for what, path in files.items():
        if path is not None:
            try:
                path.open("rb").close()
            except OSError as exc:
                raise TlsFileError(f"TLS {what} {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    except ssl.SSLError as exc:
        named = ", ".join(f"{what} {path}" for what, path in files.items() if path is not None) or "system CAs"
        raise TlsFileError(f"TLS files not usable ({named}): {exc}") from None
    client.tls_insecure_set(tls.insecure)


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(client_id: str, broker: BrokerSettings | None = None, *, nodelay: bool = True) -> mqtt.Client:
    """A paho v5 client on the v2 callback API with ``broker``'s TLS and credentials, not yet connected.

    TlsFileError names a TLS file that cannot be read or used.
    """
    wire_properties.install()  # incoming PUBLISH properties decoded in one pass (agent/protocol/properties.py)
    client = _Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    PAHO_LOG.addFilter(_not_paho_no_socket)  # a no-op after the first time
    client.enable_logger(PAHO_LOG)
    client.on_connect_fail = _report_connect_fail
    if nodelay:
        client.on_socket_open = _set_nodelay
    if broker is not None and broker.tls is not None:
        _set_tls(client, broker.tls)
    if broker is not None and broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
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
    # new_client() makes VERSION2 clients, so a callback already set takes the v2 arguments.
    previous = cast("mqtt.CallbackOnConnect_v2 | None", client.on_connect)

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
        raise BrokerConnectError(f"cannot reach MQTT broker at {host}:{port}: {connect_failure(exc)}") from None
    client.loop_start()
    ok = answered.wait(timeout)
    client.on_connect = previous
    reason = outcome.get("reason")
    if not ok or reason is None or reason.is_failure:
        client.loop_stop()
        client.disconnect()
        why = f"no CONNACK within {timeout:.1f} s" if reason is None else f"refused: {reason}"
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


class Unacknowledged:
    """QoS 1 publishes the broker has not acknowledged yet, so a client can leave once they are delivered.

    paho sends at most its in-flight window (20) and holds the rest; ``disconnect`` drops what it holds.
    A worker that answers a last batch and disconnects at once would lose those answers.
    """

    def __init__(self) -> None:
        self._pending: deque[mqtt.MQTTMessageInfo] = deque()
        self._lock = threading.Lock()

    def add(self, info: mqtt.MQTTMessageInfo) -> None:
        """Track one publish paho accepted; forgets acknowledged ones at the front (the broker acknowledges in order).

        A publish paho refused (not connected) is not tracked: there is nothing of it to wait for.
        """
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return
        with self._lock:
            self._pending.append(info)
            while self._pending and self._pending[0].is_published():
                self._pending.popleft()

    def wait(self, timeout_s: float) -> int:
        """Block until every tracked publish is acknowledged or ``timeout_s`` passed; how many are still not."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            pending = list(self._pending)
        for info in pending:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        return sum(1 for info in pending if not info.is_published())
