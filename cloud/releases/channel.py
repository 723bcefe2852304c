"""The coordinator's MQTT connection for rollouts: retained artifacts and releases out, heartbeats in."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.model_store import StoredModel
from agent.mqtt_client import BrokerConnectError, BrokerSettings, Subscriptions, connect, new_client
from agent.protocol import Topics
from agent.updates import Release
from cloud.client_ids import client_id as unique_client_id

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; fedge runs on 3.10 too

PUBLISH_TIMEOUT_S = 30.0
SUBSCRIBE_TIMEOUT_S = 10.0
Heartbeats = dict[str, dict[str, Any]]


class ReleaseChannel:
    """Publishes what agents install and keeps each device's latest heartbeat to judge the result.

    The heartbeat subscription is made in ``on_connect``, so it comes back after every
    reconnect (a clean session forgets it): a broker blip during a canary wait must not
    silence the canaries and roll back a good release.
    """

    def __init__(self, broker: BrokerSettings, topics: Topics, *, client_id: str | None = None) -> None:
        self.broker, self.topics = broker, topics
        self._heartbeat_filter = topics.device_heartbeat_filter
        self._heartbeats: Heartbeats = {}
        self._changed = threading.Condition()
        self._acks: dict[int, ReasonCode] = {}
        self._client = new_client(client_id or unique_client_id("fedge-rollout"), broker)
        self._client.message_callback_add(self._heartbeat_filter, self._on_heartbeat)
        self._subscriptions = Subscriptions(self._client, [(self._heartbeat_filter, 0)])
        self._client.on_publish = self._on_publish

    def __enter__(self) -> Self:
        connect(self._client, self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        try:
            self._subscriptions.confirm(self.broker.host, self.broker.port, SUBSCRIBE_TIMEOUT_S, "its user needs read access to"
                                        " the devices' heartbeats (fedge-cloud acl's coordinator)")
        except BrokerConnectError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish_artifact(self, stored: StoredModel) -> str:
        """The model file, retained on its artifact topic, so agents fetch it when a release names it."""
        m = stored.manifest
        topic = self.topics.artifact(m.task, m.name, m.version)
        self._publish(topic, stored.model_path.read_bytes())
        return topic

    def publish_release(self, release: Release) -> str:
        """A signed release, retained on its group's topic: it replaces the group's previous one."""
        topic = self.topics.release(release.manifest.task, release.group)
        self._publish(topic, release.to_bytes())
        return topic

    def clear_release(self, task: str, group: str) -> None:
        """No release for the group any more (an empty retained message deletes it)."""
        self._publish(self.topics.release(task, group), b"")

    def wait_until(self, done: Callable[[Heartbeats], bool], timeout_s: float) -> bool:
        """Wait (woken by each heartbeat) until ``done(latest heartbeats)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done(self._heartbeats):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def _publish(self, topic: str, payload: bytes) -> None:
        """Publish retained at QoS 1 and wait for the broker's PUBACK; ConnectionError saying why not."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:  # not connected, or paho's queue is full
            raise ConnectionError(f"could not publish {topic} to the broker at {self.broker.address}: {exc}") from None
        if not info.is_published():
            raise ConnectionError(f"the broker at {self.broker.address} did not take {topic} in time")
        reason = self._acks.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise ConnectionError(f"the broker at {self.broker.address} refused {topic}: {reason}; its user"
                                  f" needs write access to {self.topics.prefix}/models/# (fedge-cloud acl's coordinator)")

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _props: Any) -> None:
        self._acks[mid] = reason

    def _on_heartbeat(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return  # the device registry logs bad heartbeats; a rollout only needs the good ones
        if isinstance(doc, dict):
            with self._changed:
                self._heartbeats[self.topics.device_of(msg.topic) or ""] = doc
                self._changed.notify_all()
