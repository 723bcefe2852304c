"""What the MQTT clients say about their connection: once per outage with the reason, nothing on a clean stop."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.mqtt_client import BrokerSettings, connect, new_client
from agent.protocol import Topics
from agent.uplink import Uplink
from cloud.local.mosquitto import Mosquitto
from tests.mqtt_helpers import client, eventually

TOPICS = Topics()


class Attempts:
    """Counts a client's connection attempts (paho's on_pre_connect runs before each one)."""

    def __init__(self, agent: Uplink) -> None:
        self.count = 0
        self._lock = threading.Lock()
        agent._client.on_pre_connect = self._attempt

    def _attempt(self, _client: Any, _userdata: Any) -> None:
        with self._lock:
            self.count += 1

    def more_than(self, n: int) -> bool:
        with self._lock:
            return self.count > n


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="paho")
    caplog.set_level(logging.INFO, logger="agent")
    yield caplog


def warnings_naming(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and all(w in r.getMessage() for w in words)]


def paho_no_socket_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("paho") and "not connected" in r.getMessage()]


def fast_retrying(host: str, port: int, device: str = "dev-r") -> Uplink:
    return Uplink(device, TOPICS, BrokerSettings(host, port, reconnect_min_s=0.02, reconnect_max_s=0.05))


def test_a_refusing_broker_is_named_once_per_outage_with_the_reason(broker: Mosquitto,
                                                                    logs: pytest.LogCaptureFixture) -> None:
    agent = fast_retrying(broker.host, broker.port)
    attempts = Attempts(agent)
    agent.start()
    try:
        assert agent.wait_connected(5)
        for _outage in range(2):
            broker.kill()
            seen = attempts.count
            assert eventually(lambda: attempts.more_than(seen + 3)), "the agent stopped retrying"  # noqa: B023
            broker.start()
            assert agent.wait_connected(10), "the agent reconnects by itself"
    finally:
        agent.stop()
    where = f"{broker.host}:{broker.port}"
    assert len(warnings_naming(logs, where, "connection refused")) == 2, logs.text  # one per outage, not per retry
    assert [r.getMessage() for r in logs.records if "again" in r.getMessage()] == [f"reached MQTT broker {where} again"] * 2
    assert paho_no_socket_errors(logs) == []


def test_an_unknown_host_is_named_once(logs: pytest.LogCaptureFixture) -> None:
    agent = fast_retrying("no-such-host.invalid", 1883)
    attempts = Attempts(agent)
    agent.start()
    try:
        assert eventually(lambda: attempts.more_than(3)), "the agent stopped retrying"
    finally:
        agent.stop()
    assert len(warnings_naming(logs, "no-such-host.invalid:1883", "unknown host")) == 1, logs.text
    assert paho_no_socket_errors(logs) == []


def test_clean_disconnects_log_no_paho_error(broker: Mosquitto, logs: pytest.LogCaptureFixture) -> None:
    # paho's loop logged "Client is not connected" in about one clean stop out of five: repeat to see it
    for i in range(30):
        c = new_client(f"short-lived-{i}")
        connect(c, broker.host, broker.port)
        c.disconnect()
        c.loop_stop()
    for i in range(5):
        agent = fast_retrying(broker.host, broker.port, f"dev-{i}")
        agent.start()
        assert agent.wait_connected(5)
        agent.stop()
    assert paho_no_socket_errors(logs) == []


def test_wait_cloud_status_returns_the_retained_status_and_forgets_it_with_the_connection(broker: Mosquitto) -> None:
    agent = fast_retrying(broker.host, broker.port)
    agent.start()
    try:
        assert agent.wait_connected(5)
        assert agent.wait_cloud_status(0.2) is None  # no cloud on this broker
        with client(broker, "coordinator") as coordinator:
            coordinator.publish(TOPICS.cloud_status, json.dumps({"healthy": True, "overloaded": True}), qos=1,
                                retain=True).wait_for_publish(5)
        status = agent.wait_cloud_status(10)
        assert status is not None and status.overloaded
        broker.kill()  # the retained status dies with this broker: none after the reconnect
        assert eventually(lambda: not agent.connected)
        broker.start()
        assert agent.wait_connected(10)
        assert agent.wait_cloud_status(0.2) is None
    finally:
        agent.stop()
