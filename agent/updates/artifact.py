"""Waiting for one model file on its retained topic, however often the broker delivers it.

The file can arrive more than once: QoS 1 redelivery, a re-subscribe after a
reconnect, or the retained copy sent again for a second SUBSCRIBE before the
updater unsubscribed. Only the first delivery counts; the rest are ignored on
paho's network thread, which must never see an exception from here.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class ArtifactWait:
    """The bytes of the first non-empty delivery on one artifact topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._future: Future[bytes] = Future()

    def deliver(self, msg: mqtt.MQTTMessage) -> None:
        """Network thread: take the first delivery; a later one (or one after ``cancel``) is ignored."""
        if not msg.payload:
            return
        if self._future.done():
            log.debug("ignored another delivery of %s (%d bytes)", self.topic, len(msg.payload))
            return
        if self._future.set_running_or_notify_cancel():  # False: cancelled by a stop meanwhile
            self._future.set_result(bytes(msg.payload))

    def result(self, timeout: float) -> bytes:
        """The file's bytes; TimeoutError after ``timeout`` seconds, CancelledError after ``cancel``."""
        return self._future.result(timeout=timeout)

    def cancel(self) -> None:
        """Stop waiting (the agent is stopping)."""
        self._future.cancel()
