"""The coordinator's MQTT connection for rollouts: retained artifacts and releases out, heartbeats in."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import paho.mqtt.client as mqtt

from agent.model_store import StoredModel
from agent.mqtt_client import TlsFiles, connect, new_client
from agent.protocol import Topics
from agent.updates import Release, artifact_topic, release_topic

PUBLISH_TIMEOUT_S = 30.0
Heartbeats = dict[str, dict[str, Any]]


class ReleaseChannel:
    """Publishes what agents install and keeps each device's latest heartbeat to judge the result."""

    def __init__(self, host: str, port: int, topics: Topics, *, client_id: str = "fedge-rollout",
                 tls: TlsFiles | None = None, username: str | None = None, password: str | None = None) -> None:
        self.host, self.port, self.topics = host, port, topics
        self._heartbeat_filter = f"{topics.prefix}/device/+/heartbeat"
        self._heartbeats: Heartbeats = {}
        self._changed = threading.Condition()
        self._client = new_client(client_id, tls=tls, username=username, password=password)
        self._client.message_callback_add(self._heartbeat_filter, self._on_heartbeat)

    def __enter__(self) -> Self:
        connect(self._client, self.host, self.port)
        self._client.subscribe(self._heartbeat_filter, qos=0)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish_artifact(self, stored: StoredModel) -> str:
        """The model file, retained on its artifact topic, so agents fetch it when a release names it."""
        m = stored.manifest
        topic = artifact_topic(self.topics, m.task, m.name, m.version)
        self._publish(topic, stored.model_path.read_bytes())
        return topic

    def publish_release(self, release: Release) -> str:
        """A signed release, retained on its group's topic: it replaces the group's previous one."""
        topic = release_topic(self.topics, release.manifest.task, release.group)
        self._publish(topic, release.to_bytes())
        return topic

    def clear_release(self, task: str, group: str) -> None:
        """No release for the group any more (an empty retained message deletes it)."""
        self._publish(release_topic(self.topics, task, group), b"")

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
        info = self._client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise ConnectionError(f"the broker at {self.host}:{self.port} did not take {topic} in time")

    def _on_heartbeat(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return  # the device registry logs bad heartbeats; a rollout only needs the good ones
        if isinstance(doc, dict):
            with self._changed:
                self._heartbeats[msg.topic.split("/")[-2]] = doc
                self._changed.notify_all()
