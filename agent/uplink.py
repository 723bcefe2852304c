"""The agent's uplink: its one persistent MQTT v5 connection to the cloud, and the offloads in flight.

Offloaded requests, replies, the cloud's status, heartbeats and releases all
travel on it.

``submit`` publishes a request (QoS 1, Response Topic, Correlation Data,
Message Expiry = the time left) and returns a latch; the reply sets it.
A lost connection fails every in-flight future at once, so callers fall back
to their local answer immediately instead of waiting out their deadline;
paho reconnects by itself with capped exponential backoff, and offloading
resumes when the broker is back.

The coordinator's retained status arrives a moment after CONNACK (one round
trip: SUBSCRIBE, then the retained message). Until it does, the cloud counts
as absent and only high-priority requests are offloaded; ``wait_cloud_status``
bridges that window for one-shot callers (``fedge-agent infer``). A daemon
just starting answers its first requests in that window locally.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.latch import Latch
from agent.mqtt_client import BrokerSettings, new_client
from agent.protocol import (
    OFFLINE,
    ONLINE,
    ErrorReply,
    InferReply,
    InferRequest,
    ProtocolError,
    Topics,
    decode_reply,
    encode_request,
)

log = logging.getLogger(__name__)


class OffloadUnavailable(Exception):
    """The request was not sent: no connection, or ``max_inflight`` offloads are already out."""


class ConnectionLost(Exception):
    """The broker connection dropped while the request was in flight."""


@dataclass(frozen=True)
class CloudStatus:
    """The coordinator's retained status (absent until one arrives; cleared when the connection drops).

    ``expires_at`` (``time.monotonic()``) comes from the message's Message Expiry Interval, counted
    from receipt: a coordinator that died cannot leave a "healthy" status behind for ever.
    """

    doc: dict[str, Any]
    expires_at: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @property
    def overloaded(self) -> bool:
        return bool(self.doc.get("overloaded", False)) or not bool(self.doc.get("healthy", True))


class Uplink:
    """Publishes requests for one device and matches replies by Correlation Data."""

    def __init__(self, device_id: str, topics: Topics, broker: BrokerSettings, *, max_inflight: int = 32,
                 client_id: str | None = None) -> None:
        self.device_id = device_id
        self.topics = topics
        self.broker = broker
        self.max_inflight = max_inflight
        self.reply_topic = topics.device_reply(device_id)
        self._status_topic = topics.device_status(device_id)
        self._inflight: dict[bytes, Latch[InferReply | ErrorReply]] = {}
        # Correlation ids: a random prefix per client, so a reply meant for an earlier run never matches, then a count.
        self._correlation_prefix = secrets.token_bytes(8)
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._cloud_status: CloudStatus | None = None
        self._status_heard = threading.Event()  # a cloud status message arrived on this connection
        self._refusal_reported = False  # a refused CONNACK is said once, not on every retry
        self._handled: set[str] = set()  # topics given to ``subscribe``, subscribed again on every connect
        self._subscriptions = threading.Lock()  # a handler added while connecting is subscribed exactly once
        self._stopping = False
        self.ignored_replies = 0
        self._client = new_client(client_id or f"fedge-agent-{device_id}", broker)
        self._client.will_set(self._status_topic, OFFLINE, qos=1, retain=True)
        # A random floor spreads a fleet's reconnects after a broker restart; paho doubles it up to the cap.
        # paho annotates the delays as int, but its backoff arithmetic takes floats: the jitter needs fractions.
        self._client.reconnect_delay_set(broker.reconnect_min_s * random.uniform(0.5, 1.5),  # type: ignore[arg-type]
                                         broker.reconnect_max_s)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.message_callback_add(self.reply_topic, self._on_reply)
        self._client.message_callback_add(topics.cloud_status, self._on_cloud_status)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; the agent serves locally until the broker answers."""
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_cloud_status(self, timeout: float) -> CloudStatus | None:
        """The cloud's status, waiting up to ``timeout`` s for the first one on this connection.

        Returns at once when one was heard; None when none came (no coordinator) or it expired.
        """
        self._status_heard.wait(timeout)
        return self.cloud_status

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        """Publish ``offline`` (retained), fail what is still in flight, and disconnect."""
        self._stopping = True
        if self._connected.is_set():
            self._client.publish(self._status_topic, OFFLINE, qos=1, retain=True).wait_for_publish(2.0)
        self._fail_all(ConnectionLost("agent is stopping"))
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks (network thread) ---------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            if not self._refusal_reported:
                log.warning("broker %s:%s refused the connection: %s; retrying in the background",
                            self.broker.host, self.broker.port, reason)
            self._refusal_reported = True
            return
        self._refusal_reported = False
        # Replies at QoS 0: a reply is only of use on this connection (a lost connection fails every
        # in-flight request at once, so a redelivered reply could never be matched), and QoS 1 would
        # cost a PUBACK on the agent's network thread between the reply and the waiting caller.
        client.subscribe(self.reply_topic, qos=0)
        client.subscribe(self.topics.cloud_status, qos=1)
        with self._subscriptions:
            for topic in sorted(self._handled):
                client.subscribe(topic, qos=1)
            self._connected.set()
        client.publish(self._status_topic, ONLINE, qos=1, retain=True)
        log.info("connected to broker %s:%s", self.broker.host, self.broker.port)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._status_heard.clear()
        self._cloud_status = None
        self._fail_all(ConnectionLost(f"broker connection lost: {reason}"))
        if was_connected and not self._stopping:
            log.warning("connection to broker %s:%s lost (%s); answering locally while reconnecting",
                        self.broker.host, self.broker.port, reason)

    def _on_reply(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self._lock:
            future = self._inflight.pop(correlation, None) if correlation is not None else None
        if future is None:
            self.ignored_replies += 1
            log.warning("ignored a reply with unknown correlation data %r (late or not ours)", correlation)
            return
        try:
            future.set_result(decode_reply(msg.payload, msg.properties))
        except ProtocolError as exc:
            self.ignored_replies += 1
            log.warning("ignored a malformed reply from the cloud: %s", exc)
            future.set_exception(exc)

    def _on_cloud_status(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload) if msg.payload else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("ignored an unreadable cloud status")
            return
        expiry = getattr(msg.properties, "MessageExpiryInterval", None)
        expires_at = time.monotonic() + expiry if expiry is not None else None
        self._cloud_status = CloudStatus(doc, expires_at) if isinstance(doc, dict) else None
        self._status_heard.set()  # after the store: a waiter reads this status

    # -- requests --------------------------------------------------------------------------
    def submit(self, request: InferRequest) -> tuple[bytes, Latch[InferReply | ErrorReply]]:
        """Publish a request; returns its correlation id and the latch the reply will set."""
        if not self._connected.is_set():
            raise OffloadUnavailable("not connected to the broker")
        correlation = self._correlation_prefix + next(self._sequence).to_bytes(8, "big")
        future: Latch[InferReply | ErrorReply] = Latch()
        with self._lock:
            if len(self._inflight) >= self.max_inflight:
                raise OffloadUnavailable(f"{self.max_inflight} offloads already in flight")
            self._inflight[correlation] = future
        payload, props = encode_request(request, response_topic=self.reply_topic, correlation_data=correlation)
        info = self._client.publish(self.topics.infer(request.task), payload, qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.forget(correlation)
            raise OffloadUnavailable(f"publish failed: {mqtt.error_string(info.rc)}")
        return correlation, future

    def forget(self, correlation: bytes) -> None:
        """Drop an in-flight entry whose caller gave up (deadline passed); a late reply is then ignored."""
        with self._lock:
            self._inflight.pop(correlation, None)

    @property
    def inflight(self) -> int:
        return len(self._inflight)  # one read of a dict's size needs no lock

    @property
    def cloud_status(self) -> CloudStatus | None:
        """The cloud's last status, None when none arrived or its Message Expiry Interval has passed."""
        status = self._cloud_status
        return None if status is None or status.expired(time.monotonic()) else status

    def subscribe(self, topic: str, handler: Callable[[mqtt.MQTTMessage], None]) -> None:
        """Hand ``topic``'s messages to ``handler`` (on the network thread), re-subscribed after reconnects.

        The handler's exceptions are logged and go no further: one escaping into paho would end the
        agent's only network thread, and with it offloading, heartbeats and releases.
        """

        def guarded(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                handler(msg)
            except Exception:
                log.exception("the handler of %s failed on a message of %d bytes", msg.topic, len(msg.payload))

        self._client.message_callback_add(topic, guarded)
        with self._subscriptions:
            self._handled.add(topic)
            if self._connected.is_set():
                self._client.subscribe(topic, qos=1)

    def unsubscribe(self, topic: str) -> None:
        """Stop what ``subscribe`` started."""
        with self._subscriptions:
            self._handled.discard(topic)
            if self._connected.is_set():
                self._client.unsubscribe(topic)
        self._client.message_callback_remove(topic)

    def publish_json(self, topic: str, doc: dict[str, Any], *, qos: int = 0, retain: bool = False) -> None:
        """Publish a JSON document (heartbeats); dropped silently while disconnected."""
        if self._connected.is_set():
            self._client.publish(topic, json.dumps(doc).encode(), qos=qos, retain=retain)

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            futures, self._inflight = list(self._inflight.values()), {}
        for future in futures:
            if not future.done():
                future.set_exception(error)

