"""Small helpers for tests that speak MQTT through a real broker."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt

from agent.mqtt_client import BrokerSettings, TlsFiles, connect, new_client
from cloud.local.mosquitto import Mosquitto

_ids = itertools.count()


@contextmanager
def client(broker: Mosquitto, name: str = "test", *, tls: TlsFiles | None = None,
           username: str | None = None, password: str | None = None) -> Iterator[mqtt.Client]:
    """A connected v5 client whose loop runs until the block ends."""
    c = new_client(f"{name}-{next(_ids)}", BrokerSettings(tls=tls, username=username, password=password))
    connect(c, "localhost" if tls else broker.host, broker.port, timeout=5)
    try:
        yield c
    finally:
        c.disconnect()
        c.loop_stop()


class Inbox:
    """Messages a client received, to wait on without sleeping."""

    def __init__(self, c: mqtt.Client) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)

    def get(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def empty_after(self, seconds: float) -> bool:
        try:
            self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


def subscribe(c: mqtt.Client, topic: str, qos: int = 1, timeout: float = 5.0) -> list[Any]:
    """Subscribe and wait for the SUBACK; return its reason codes."""
    done = threading.Event()
    codes: list[Any] = []

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, reason_codes: list[Any], _p: Any) -> None:
        codes.extend(reason_codes)
        done.set()

    c.on_subscribe = on_subscribe
    c.subscribe(topic, qos=qos)
    assert done.wait(timeout), f"no SUBACK for {topic}"
    return codes


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Whether ``check`` holds within ``timeout`` seconds (work on other threads; polled, never a blind sleep)."""
    deadline, tick = time.monotonic() + timeout, threading.Event()
    while not check():
        if time.monotonic() >= deadline:
            return False
        tick.wait(0.02)
    return True
