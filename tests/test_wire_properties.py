"""The one-pass PUBLISH property codec agrees with paho's own, byte for byte in meaning."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt_client import connect, new_client
from agent.protocol.properties import WireProperties
from cloud.local.mosquitto import Mosquitto

# MQTT strings: no NUL and no U+FEFF (the standard forbids them); surrogates cannot be encoded at all.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufeff"), max_size=40)
FIELDS = ("PayloadFormatIndicator", "MessageExpiryInterval", "ContentType", "ResponseTopic", "CorrelationData",
          "TopicAlias", "UserProperty", "SubscriptionIdentifier")


@st.composite
def publish_properties(draw: st.DrawFn) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if draw(st.booleans()):
        values["PayloadFormatIndicator"] = draw(st.integers(0, 1))
    if draw(st.booleans()):
        values["MessageExpiryInterval"] = draw(st.integers(0, 2**32 - 1))
    for name in ("ContentType", "ResponseTopic"):
        if draw(st.booleans()):
            values[name] = draw(text)
    if draw(st.booleans()):
        values["CorrelationData"] = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        values["TopicAlias"] = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        values["UserProperty"] = draw(st.lists(st.tuples(text, text), min_size=1, max_size=6))
    if draw(st.booleans()):
        values["SubscriptionIdentifier"] = draw(st.lists(st.integers(1, 268435455), min_size=1, max_size=3))
    return values


def paho_properties(values: dict[str, Any]) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def attributes(props: Properties) -> dict[str, Any]:
    return {name: getattr(props, name) for name in FIELDS if hasattr(props, name)}


@settings(max_examples=300, deadline=None)
@given(publish_properties())
def test_unpack_reads_what_paho_reads(values: dict[str, Any]) -> None:
    packed = paho_properties(values).pack()
    theirs, their_length = Properties(PacketTypes.PUBLISH).unpack(packed)
    ours, our_length = WireProperties().unpack(packed)
    assert attributes(ours) == attributes(theirs) and our_length == their_length


@settings(max_examples=300, deadline=None)
@given(publish_properties())
def test_pack_writes_what_paho_reads(values: dict[str, Any]) -> None:
    fast = {k: v for k, v in values.items() if k in ("MessageExpiryInterval", "ContentType", "ResponseTopic",
                                                      "CorrelationData", "UserProperty")}
    props = WireProperties()
    for name, value in fast.items():
        props.set(name, value)
    decoded, _ = Properties(PacketTypes.PUBLISH).unpack(props.pack())
    assert attributes(decoded) == attributes(paho_properties(fast))


def test_other_properties_still_pack_through_paho() -> None:
    props = WireProperties.publish(content_type="application/json")
    props.TopicAlias = 7  # paho's own setter: the fast packer steps aside
    decoded, _ = Properties(PacketTypes.PUBLISH).unpack(props.pack())
    assert (decoded.TopicAlias, decoded.ContentType) == (7, "application/json")
    with pytest.raises(ValueError, match="not a property fedge sets"):
        props.set("TopicAlias", 3)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_garbage_is_refused_like_paho_refuses_it(data: bytes) -> None:
    """Whatever paho can decode, we decode the same; whatever it refuses, we refuse as a decode error."""
    try:
        theirs: Any = attributes(Properties(PacketTypes.PUBLISH).unpack(data)[0])
    except _packet.DECODE_ERRORS:
        theirs = "refused"
    try:
        ours: Any = attributes(WireProperties().unpack(data)[0])
    except _packet.DECODE_ERRORS:
        ours = "refused"
    assert ours == theirs


def test_paho_decodes_received_messages_with_it(tmp_path: Path) -> None:
    """A real broker delivers a v5 message; its properties came through the fast decoder, intact."""
    with Mosquitto(tmp_path / "broker") as broker:
        receiver, sender = new_client("wire-rx"), new_client("wire-tx")
        assert _packet.Properties is WireProperties
        got: list[mqtt.MQTTMessage] = []
        arrived, subscribed = threading.Event(), threading.Event()
        receiver.on_message = lambda _c, _u, msg: (got.append(msg), arrived.set())
        receiver.on_subscribe = lambda *_: subscribed.set()
        for client in (receiver, sender):
            connect(client, broker.host, broker.port)
        receiver.subscribe("wire/t", qos=1)
        assert subscribed.wait(5)
        props = WireProperties.publish(content_type="application/x-test", user=[("k", "v"), ("k", "w")])
        props.set("CorrelationData", b"\x00\x01")
        sender.publish("wire/t", b"body", qos=1, properties=props)
        assert arrived.wait(5)
        for client in (receiver, sender):
            client.disconnect()
            client.loop_stop()
    received = got[0].properties
    assert isinstance(received, WireProperties)
    assert attributes(received) == {"ContentType": "application/x-test", "CorrelationData": b"\x00\x01",
                                    "UserProperty": [("k", "v"), ("k", "w")]}


def _user(key: bytes, value: bytes) -> bytes:
    return b"\x26" + len(key).to_bytes(2, "big") + key + len(value).to_bytes(2, "big") + value


def test_user_properties_around_other_properties_keep_their_order() -> None:
    """Runs of user properties broken by another property, and a two-byte identifier, read as paho reads them."""
    body = _user(b"a", b"1") + _user(b"b", b"2") + b"\x03\x00\x01x" + _user(b"a", b"3") + b"\xa6\x00" + _user(b"c", b"")[1:]
    packed = bytes([len(body)]) + body + b"payload"
    theirs, their_length = Properties(PacketTypes.PUBLISH).unpack(packed)
    ours, our_length = WireProperties().unpack(packed)
    assert attributes(ours) == attributes(theirs) == {
        "ContentType": "x", "UserProperty": [("a", "1"), ("b", "2"), ("a", "3"), ("c", "")]}
    assert our_length == their_length == len(body) + 1


@pytest.mark.parametrize("body", [
    b"\x26\x00\x05ab",  # key longer than the properties
    b"\x26\x00\x01k\x00",  # value length cut short
    b"\x26\x00\x01k\x00\x03v",  # value longer than the properties
    b"\x26\x00\x01k\x00\x01v\x26",  # a second pair that never starts
    b"\x26\x00\x01\x00\x00\x01v",  # NUL in the key
    b"\x26\x00\x01k\x00\x03\xef\xbb\xbf",  # U+FEFF in the value
])
def test_broken_user_properties_are_malformed_packets(body: bytes) -> None:
    packed = bytes([len(body)]) + body
    with pytest.raises(MalformedPacket):
        Properties(PacketTypes.PUBLISH).unpack(packed)
    with pytest.raises(MalformedPacket):
        WireProperties().unpack(packed)
