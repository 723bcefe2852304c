"""MQTT v5 PUBLISH properties that cost microseconds, not a tenth of a millisecond.

paho's ``Properties`` checks each attribute against its whole name table, packs
by walking that table and rebuilds its tables for every instance: about 10 µs
per property each way, which was ~0.5 ms of an offload's 1.4 ms round trip
(a request and its reply each carry eight or nine properties).

``WireProperties`` is a drop-in subclass: the same attributes, the same
constructor, the same errors, with PUBLISH packing and unpacking done in one
pass over the bytes. fedge builds its messages with it, and ``install`` makes
paho decode incoming PUBLISH packets with it (paho looks the class up in its
``_packet`` module at every packet; a test pins that, so a paho upgrade that
moves it fails loudly instead of silently going slow). Other packet types and
properties fedge never uses go through paho's own code.
"""

from __future__ import annotations

import struct
from typing import Any

from paho.mqtt import _packet
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_TABLES = Properties(PacketTypes.PUBLISH)  # paho's name/type tables, built once instead of per message
_INTERNAL = ("packetType", "types", "names", "properties")

# PUBLISH property identifiers (MQTT v5 section 2.2.2.2), each one byte on the wire, and paho's names.
_EXPIRY, _CONTENT_TYPE, _RESPONSE_TOPIC, _CORRELATION, _USER = 2, 3, 8, 9, 38
_FORMAT, _SUBSCRIPTION_ID, _TOPIC_ALIAS = 1, 11, 35
_NAMES = {_FORMAT: "PayloadFormatIndicator", _EXPIRY: "MessageExpiryInterval", _CONTENT_TYPE: "ContentType",
          _RESPONSE_TOPIC: "ResponseTopic", _CORRELATION: "CorrelationData", _SUBSCRIPTION_ID: "SubscriptionIdentifier",
          _TOPIC_ALIAS: "TopicAlias", _USER: "UserProperty"}
_PACKED = {"MessageExpiryInterval", "ContentType", "ResponseTopic", "CorrelationData", "UserProperty"}
_FAST_ATTRIBUTES = frozenset(_PACKED) | frozenset(_INTERNAL)  # an instance holding only these packs without paho
_LENGTH = struct.Struct("!H").pack  # a string's length prefix; raises struct.error past 65535, as paho's does
_ID_AND_LENGTH = struct.Struct("!BH").pack
_ID_AND_INT = struct.Struct("!BI").pack


def _variable_int(value: int) -> bytes:
    """MQTT's variable byte integer: 7 bits a byte, low bits first, high bit = more to come."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_variable_int(buffer: bytes, at: int) -> tuple[int, int]:
    """(value, position after it); at most four bytes, as the standard says."""
    value = shift = 0
    for i in range(4):
        byte = buffer[at + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at + i + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def _read_bytes(buffer: bytes, at: int, end: int) -> tuple[bytes, int]:
    if at + 2 > end:
        raise MalformedPacket("not enough data to read a length")
    length = (buffer[at] << 8) | buffer[at + 1]
    if at + 2 + length > end:
        raise MalformedPacket("length-delimited value runs past the properties")
    return bytes(buffer[at + 2:at + 2 + length]), at + 2 + length


def _read_utf8(buffer: bytes, at: int, end: int) -> tuple[str, int]:
    data, at = _read_bytes(buffer, at, end)
    text = data.decode("utf-8")  # a UnicodeDecodeError is a ValueError: paho reports it as a malformed packet
    if "\x00" in text or "\ufeff" in text:  # [MQTT-1.5.4-2], [MQTT-1.5.4-3]; surrogates cannot decode
        raise MalformedPacket("null or U+FEFF in UTF-8 data")
    return text, at


def _read_user_properties(buffer: bytes, at: int, end: int, pairs: list[tuple[str, str]]) -> int:
    """Append a run of back-to-back User Properties to ``pairs``; return the position after the run.

    They are most of every fedge message (four to nine pairs), so both strings of a pair are read
    inline: the checks and errors of ``_read_utf8`` in the same order, without a call per string.
    ``at`` is just past the first pair's identifier.
    """
    while True:
        strings = []
        for _ in range(2):  # the key, then the value
            if at + 2 > end:
                raise MalformedPacket("not enough data to read a length")
            start = at + 2
            at = start + ((buffer[at] << 8) | buffer[at + 1])
            if at > end:
                raise MalformedPacket("length-delimited value runs past the properties")
            text = buffer[start:at].decode()
            if "\x00" in text or "\ufeff" in text:
                raise MalformedPacket("null or U+FEFF in UTF-8 data")
            strings.append(text)
        pairs.append((strings[0], strings[1]))
        if at >= end or buffer[at] != _USER:
            return at
        at += 1


class WireProperties(Properties):
    """paho ``Properties`` with one-pass PUBLISH packing and unpacking and shared tables."""

    types = _TABLES.types
    names = _TABLES.names
    properties = _TABLES.properties

    def __init__(self, packetType: int = PacketTypes.PUBLISH) -> None:  # paho's signature
        object.__setattr__(self, "packetType", packetType)

    @classmethod
    def publish(cls, *, content_type: str | None = None, user: list[tuple[str, str]] | None = None) -> WireProperties:
        """PUBLISH properties with a content type and user properties set."""
        props = cls()
        if content_type is not None:
            props.set("ContentType", content_type)
        if user:
            props.set("UserProperty", user)
        return props

    def set(self, name: str, value: Any) -> None:
        """Set one of the properties fedge sends, without paho's table walk (name and type are right by construction)."""
        if name not in _PACKED:
            raise ValueError(f"{name} is not a property fedge sets on PUBLISH")
        object.__setattr__(self, name, value)

    def pack(self) -> bytes:
        """PUBLISH properties fedge sets, written in paho's order in one pass; anything else goes through paho."""
        attrs = vars(self)
        if self.packetType != PacketTypes.PUBLISH or not attrs.keys() <= _FAST_ATTRIBUTES:
            return bytes(super().pack())
        body = bytearray()
        if "MessageExpiryInterval" in attrs:
            body += _ID_AND_INT(_EXPIRY, attrs["MessageExpiryInterval"])
        for identifier, name in ((_CONTENT_TYPE, "ContentType"), (_RESPONSE_TOPIC, "ResponseTopic")):
            if name in attrs:
                data = attrs[name].encode()
                body += _ID_AND_LENGTH(identifier, len(data))
                body += data
        if "CorrelationData" in attrs:
            data = bytes(attrs["CorrelationData"])
            body += _ID_AND_LENGTH(_CORRELATION, len(data))
            body += data
        for key, value in attrs.get("UserProperty", ()):
            data = key.encode()
            body += _ID_AND_LENGTH(_USER, len(data))
            body += data
            data = value.encode()
            body += _LENGTH(len(data))
            body += data
        return _variable_int(len(body)) + body

    def unpack(self, buffer: bytes) -> tuple[WireProperties, int]:
        """Read PUBLISH properties in one pass over the bytes; other packet types go through paho.

        Identifiers are one byte in practice (a longer encoding is still read); attributes are set
        only once the whole block has parsed, so a malformed block leaves none behind.
        """
        if self.packetType != PacketTypes.PUBLISH:
            return super().unpack(buffer)
        attrs = vars(self)
        for stale in [n for n in attrs if n not in _INTERNAL]:
            del attrs[stale]
        length, at = _read_variable_int(buffer, 0)
        end = at + length
        if end > len(buffer):
            raise MalformedPacket("properties run past the packet")
        values: dict[str, Any] = {}
        while at < end:
            identifier = buffer[at]
            if identifier & 0x80:
                identifier, at = _read_variable_int(buffer, at)
            else:
                at += 1
            if identifier == _USER:
                at = _read_user_properties(buffer, at, end, values.setdefault("UserProperty", []))
                continue
            name = _NAMES.get(identifier)
            if name is None:
                raise MalformedPacket(f"property {identifier} is not allowed in PUBLISH")
            value: Any
            if identifier == _SUBSCRIPTION_ID:
                number, at = _read_variable_int(buffer, at)
                values.setdefault(name, []).append(number)
                continue
            if name in values:
                raise MalformedPacket(f"property {name} must not appear more than once")
            if identifier == _EXPIRY:
                if at + 4 > end:
                    raise MalformedPacket("truncated Message Expiry Interval")
                value, at = struct.unpack_from("!I", buffer, at)[0], at + 4
            elif identifier == _TOPIC_ALIAS:
                if at + 2 > end:
                    raise MalformedPacket("truncated Topic Alias")
                value, at = struct.unpack_from("!H", buffer, at)[0], at + 2
            elif identifier == _FORMAT:
                if at + 1 > end:
                    raise MalformedPacket("truncated Payload Format Indicator")
                value, at = buffer[at], at + 1
            elif identifier == _CORRELATION:
                value, at = _read_bytes(buffer, at, end)
            else:
                value, at = _read_utf8(buffer, at, end)
            values[name] = value
        if at != end:
            raise MalformedPacket("a property runs past the properties length")
        attrs.update(values)
        return self, end


def install() -> None:
    """Make paho decode incoming packets' properties with ``WireProperties`` (idempotent)."""
    if getattr(_packet, "Properties", None) is not Properties and getattr(_packet, "Properties", None) is not WireProperties:
        raise RuntimeError("paho.mqtt._packet no longer decodes properties with paho's Properties: "
                           "agent/protocol/properties.py needs a look at this paho version")
    _packet.Properties = WireProperties  # type: ignore[attr-defined]  # not exported: replacing it is install()'s job
