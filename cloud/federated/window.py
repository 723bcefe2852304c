"""The cloud's side of the training window: open it (retained) while rounds run, close it after.

Agents run their SuperNode only while the window is open (agent/federated/supernode.py).
The open window carries ``until`` and a Message Expiry Interval to match, so a
coordinator that dies mid-run cannot leave the fleet's SuperNodes running.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt_client import BrokerSettings, connect, new_client
from agent.protocol import Topics
from agent.protocol.window import TrainingWindow
from cloud.client_ids import client_id

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; fedge runs on 3.10 too

PUBLISH_TIMEOUT_S = 10.0


class WindowPublisher:
    """Publishes a run's training window on the broker; ``close`` (or leaving the ``with``) closes it."""

    def __init__(self, broker: BrokerSettings, topics: Topics, run: str, task: str) -> None:
        self.broker, self.topics, self.run, self.task = broker, topics, run, task
        self._client = new_client(client_id("fedge-fl"), broker)

    def __enter__(self) -> Self:
        connect(self._client, self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        return self

    def open(self, seconds: float) -> TrainingWindow:
        """Open the window for ``seconds`` from now (published again to extend it)."""
        window = TrainingWindow(True, self.run, self.task, time.time() + seconds)
        self._publish(window)
        return window

    def close(self) -> None:
        self._publish(TrainingWindow(False, self.run, self.task))

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._client.is_connected():
                self.close()
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def _publish(self, window: TrainingWindow) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        expiry = window.expiry_s()
        if expiry is not None:
            properties.MessageExpiryInterval = expiry
        info = self._client.publish(self.topics.federated_window, window.encode(), qos=1, retain=True,
                                    properties=properties)
        info.wait_for_publish(PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise ConnectionError(f"the broker at {self.broker.address} did not take the training window in time")
