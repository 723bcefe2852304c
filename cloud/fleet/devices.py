"""Feed the device registry from the fleet's MQTT traffic: heartbeats, and status with its Last Will.

Agents publish ``{prefix}/device/{id}/heartbeat`` (JSON) and a retained
``{prefix}/device/{id}/status`` (``online``, and ``offline`` as their Last
Will), so the broker tells us when a device dies without a goodbye. A
heartbeat's labelled-feedback counts become the model versions' feedback
accuracy (cloud/fleet/feedback.py). A bad message, or a bad feedback section of a
good heartbeat, is logged and dropped; the listener keeps going. It runs inside the
coordinator, or alone with ``fedge-cloud listen``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from agent.mqtt_client import BrokerConnectError, BrokerSettings, Subscriptions, connect, new_client
from agent.protocol import DEFAULT_PREFIX, OFFLINE, ONLINE, Topics
from cloud.fleet.feedback import record_feedback
from cloud.registry import Registry

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; fedge runs on 3.10 too

log = logging.getLogger(__name__)


class DeviceListener:
    """Subscribes to every device's heartbeat and status and writes them to ``registry``."""

    def __init__(self, registry: Registry, broker: BrokerSettings, topic_prefix: str = DEFAULT_PREFIX, *,
                 client_id: str = "fedge-devices", clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.broker = broker
        self.topics = Topics(topic_prefix)
        self.clock = clock
        self.heartbeat_filter = self.topics.device_heartbeat_filter
        self.status_filter = self.topics.device_status_filter
        self._client = new_client(client_id, broker)
        self._subscriptions = Subscriptions(self._client, [(self.heartbeat_filter, 0), (self.status_filter, 1)])
        self._client.message_callback_add(self.heartbeat_filter, self._on_heartbeat)
        self._client.message_callback_add(self.status_filter, self._on_status)

    def start(self, timeout: float = 10.0) -> None:
        """Connect and listen in paho's thread; return once the broker confirmed the subscriptions.

        Heartbeats are not retained: one sent before that would be missed. BrokerConnectError otherwise.
        """
        connect(self._client, self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        try:
            self._subscriptions.confirm(self.broker.host, self.broker.port, timeout,
                                        "its user needs read access to the devices' status and heartbeats")
        except BrokerConnectError:
            self.stop()
            raise

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _on_heartbeat(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device_id = self.topics.device_of(msg.topic) or ""  # the filters only match device topics
        try:
            heartbeat = json.loads(msg.payload)
            if isinstance(heartbeat, dict) and heartbeat.get("device_id", device_id) != device_id:
                raise ValueError(f"it names device {heartbeat['device_id']!r}, not the one of its topic")
            self.registry.record_heartbeat(device_id, heartbeat, self.clock())
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
            log.warning("ignored a heartbeat from %s: %s", device_id, exc)
            return
        except Exception:  # a registry outage must not kill paho's thread; each later call reconnects until it is back
            log.exception("could not record a heartbeat from %s", device_id)
            return
        try:
            record_feedback(self.registry, device_id, heartbeat)
        except ValueError as exc:
            log.warning("ignored the feedback in a heartbeat from %s: %s", device_id, exc)
        except Exception:
            log.exception("could not record the feedback in a heartbeat from %s", device_id)

    def _on_status(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device_id = self.topics.device_of(msg.topic) or ""  # the filters only match device topics
        if msg.payload not in (ONLINE, OFFLINE):
            log.warning("ignored a status from %s: %r is neither 'online' nor 'offline'", device_id, msg.payload[:40])
            return
        try:
            self.registry.record_presence(device_id, msg.payload == ONLINE, self.clock())
        except Exception:
            log.exception("could not record the status of %s", device_id)
