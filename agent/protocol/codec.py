"""MQTT v5 encoding of requests, replies and errors: the bytes and properties on the wire.

Decoding functions raise only ``ProtocolError``: whatever arrives, the caller can
answer it with an error reply and keep serving.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from paho.mqtt.properties import Properties

from agent.protocol import oip, tensors
from agent.protocol.errors import ErrorCode, ProtocolError
from agent.protocol.limits import DEFAULT_LIMITS, Limits
from agent.protocol.messages import (
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    BodyKind,
    ErrorReply,
    InferReply,
    InferRequest,
    Source,
)
from agent.protocol.properties import WireProperties
from agent.protocol.topics import publishable

if TYPE_CHECKING:
    from agent.protocol.binary import BinaryPart

CONTENT_TYPE_TENSORS = "application/x-fedge-tensors"
CONTENT_TYPE_JSON = "application/json"
P_REQUEST_ID = "fedge-request-id"
P_PRIORITY = "fedge-priority"
P_TIMEOUT = "fedge-timeout-ms"
P_MODEL = "fedge-model"
P_FUSION = "fedge-fusion"
P_STATUS = "fedge-status"
P_MODEL_VERSION = "fedge-model-version"
P_SOURCE = "fedge-source"
P_DEGRADED = "fedge-degraded"
P_TIMING = "fedge-timing-ms"
STATUS_OK = "ok"
MAX_TIMEOUT_MS = 24 * 3600 * 1000


def _user_properties(props: Properties | None, limits: Limits) -> tuple[dict[str, str], list[str]]:
    """The first value of each user property key and the tensor headers in order, in one pass over the pairs.

    One dict instead of a scan of the pairs per key looked up; the first occurrence of a key wins.
    """
    pairs = list(getattr(props, "UserProperty", []) or []) if props is not None else []
    if len(pairs) > limits.max_user_properties:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{len(pairs)} user properties; at most {limits.max_user_properties}")
    first: dict[str, str] = {}
    headers: list[str] = []
    for raw_key, raw_value in pairs:
        key, value = str(raw_key), str(raw_value)
        if key == tensors.TENSOR_PROPERTY:
            headers.append(value)
        elif key not in first:
            first[key] = value
    return first, headers


def body_kind(props: Properties | None) -> BodyKind:
    """The body kind a message declares; never raises, so even garbage can be answered in kind."""
    content_type = getattr(props, "ContentType", None) if props is not None else None
    if content_type == CONTENT_TYPE_TENSORS:
        return BodyKind.RAW
    if content_type is None and props is not None:
        pairs = getattr(props, "UserProperty", []) or []
        if any(isinstance(p, tuple) and p and p[0] == tensors.TENSOR_PROPERTY for p in pairs):
            return BodyKind.RAW
    return BodyKind.JSON


def _int_param(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, str):
        text = value
        try:
            value = int(text)
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} {text[:40]!r} is not an integer") from None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} must be an integer from {low} to {high}, got {value!r:.40}")
    return value


def _fusion_param(value: object) -> float:
    try:
        weight = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"fusion weight {value!r:.40} is not a number") from None
    if not 0.0 <= weight <= 1.0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"fusion weight must be in [0, 1], got {weight}")
    return weight


def _request_from_params(task: str, inputs: dict[str, Any], params: dict[str, Any], kind: BodyKind) -> InferRequest:
    request_id = params.get("id")
    model = params.get("model")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 128):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "request id must be a string of at most 128 characters")
    if model is not None and (not isinstance(model, str) or not model):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "model must be a non-empty string")
    fields: dict[str, Any] = {
        "task": task,
        "inputs": inputs,
        "priority": _int_param(params.get("priority", PRIORITY_DEFAULT), "priority", PRIORITY_MIN, PRIORITY_MAX),
        "timeout_ms": None
        if params.get("timeout_ms") is None
        else _int_param(params["timeout_ms"], "timeout_ms", 0, MAX_TIMEOUT_MS),
        "model": model,
        "fusion": None if params.get("fusion") is None else _fusion_param(params["fusion"]),
        "kind": kind,
    }
    if request_id:
        fields["request_id"] = request_id
    return InferRequest(**fields)


def decode_request(
    task: str, payload: bytes | bytearray, props: Properties | None, limits: Limits = DEFAULT_LIMITS
) -> InferRequest:
    """Decode a request published to ``…/infer/{task}``; raises only ``ProtocolError``."""
    if len(payload) > limits.max_payload_bytes:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"payload of {len(payload)} bytes is over the {limits.max_payload_bytes}-byte limit")
    content_type = getattr(props, "ContentType", None) if props is not None else None
    if content_type not in (None, CONTENT_TYPE_TENSORS, CONTENT_TYPE_JSON):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"content type {str(content_type)[:60]!r} is not served; use {CONTENT_TYPE_TENSORS} or {CONTENT_TYPE_JSON}",
        )
    first, headers = _user_properties(props, limits)
    if body_kind(props) is BodyKind.RAW:
        inputs = tensors.decode(headers, payload, limits)
        params = {
            "id": first.get(P_REQUEST_ID),
            "priority": first.get(P_PRIORITY) or PRIORITY_DEFAULT,
            "timeout_ms": first.get(P_TIMEOUT),
            "model": first.get(P_MODEL),
            "fusion": first.get(P_FUSION),
        }
        return _request_from_params(task, inputs, params, BodyKind.RAW)
    return decode_document(task, oip.parse_body(payload, limits), limits)


def decode_document(task: str, doc: dict[str, Any], limits: Limits = DEFAULT_LIMITS,
                    binary: BinaryPart | None = None) -> InferRequest:
    """A request from a parsed OIP inference document (``binary``: the raw part of a binary-extension body)."""
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "\"parameters\" must be an object")
    inputs = oip.decode_tensors(doc.get("inputs"), "inputs", limits, binary)
    return _request_from_params(task, inputs, {**params, "id": doc.get("id")}, BodyKind.JSON)


def _properties(content_type: str, pairs: list[tuple[str, str]]) -> WireProperties:
    return WireProperties.publish(content_type=content_type, user=pairs)


def encode_request(
    request: InferRequest,
    *,
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
) -> tuple[bytes, Properties]:
    """Payload and properties for a request; Message Expiry covers the timeout, rounded up."""
    if request.kind is BodyKind.RAW:
        headers, body = tensors.encode(request.inputs)
        pairs = [(tensors.TENSOR_PROPERTY, h) for h in headers]
        pairs += [(P_REQUEST_ID, request.request_id), (P_PRIORITY, str(request.priority))]
        if request.timeout_ms is not None:
            pairs.append((P_TIMEOUT, str(request.timeout_ms)))
        if request.model is not None:
            pairs.append((P_MODEL, request.model))
        if request.fusion is not None:
            pairs.append((P_FUSION, repr(request.fusion)))
        props = _properties(CONTENT_TYPE_TENSORS, pairs)
    else:
        params = {
            k: v
            for k, v in (
                ("priority", request.priority),
                ("timeout_ms", request.timeout_ms),
                ("model", request.model),
                ("fusion", request.fusion),
            )
            if v is not None
        }
        doc = {"id": request.request_id, "inputs": oip.encode_tensors(request.inputs), "parameters": params}
        body = oip.dumps(doc)
        props = _properties(CONTENT_TYPE_JSON, [])
    if response_topic:
        props.set("ResponseTopic", response_topic)
    if correlation_data is not None:
        props.set("CorrelationData", correlation_data)
    if request.timeout_ms is not None:
        props.set("MessageExpiryInterval", max(1, math.ceil(request.timeout_ms / 1000)))
    return body, props


def _reply_pairs(reply: InferReply) -> list[tuple[str, str]]:
    timing = ";".join([f"{k}={v:.3f}" for k, v in reply.timings_ms.items()])
    pairs = [
        (P_STATUS, STATUS_OK),
        (P_REQUEST_ID, reply.request_id),
        (P_MODEL, reply.model_name),
        (P_MODEL_VERSION, reply.model_version),
        (P_SOURCE, reply.source.value),
        (P_DEGRADED, "1" if reply.degraded else "0"),
    ]
    return pairs + ([(P_TIMING, timing)] if timing else [])


def encode_reply(
    reply: InferReply | ErrorReply, kind: BodyKind, request_props: Properties | None = None
) -> tuple[bytes, Properties]:
    """Payload and properties for a reply in the kind of its request, echoing its Correlation Data."""
    if isinstance(reply, ErrorReply):
        doc = {"error": reply.message, "code": reply.code.value, "id": reply.request_id}
        props = _properties(CONTENT_TYPE_JSON, [(P_STATUS, reply.code.value), (P_REQUEST_ID, reply.request_id)])
        body = oip.dumps(doc)
    elif kind is BodyKind.RAW:
        headers, body = tensors.encode(reply.outputs)
        pairs = [(tensors.TENSOR_PROPERTY, h) for h in headers] + _reply_pairs(reply)
        props = _properties(CONTENT_TYPE_TENSORS, pairs)
    else:
        body = oip.dumps(oip.reply_document(reply))
        props = _properties(CONTENT_TYPE_JSON, [(P_STATUS, STATUS_OK), (P_REQUEST_ID, reply.request_id)])
    correlation = getattr(request_props, "CorrelationData", None) if request_props is not None else None
    if correlation is not None:
        props.set("CorrelationData", correlation)
    return body, props


def _timings(text: str | None) -> dict[str, float]:
    timings: dict[str, float] = {}
    for item in (text or "").split(";"):
        key, _, value = item.partition("=")
        try:
            timings[key] = float(value)
        except ValueError:
            continue
    return timings


_SOURCES = {source.value: source for source in Source}


def _source(value: object) -> Source:
    """The reply's source; a dict lookup first, since the enum call costs ten times more on every reply."""
    known = _SOURCES.get(value) if isinstance(value, str) else None
    if known is not None:
        return known
    try:
        return Source(value)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"reply source {value!r:.40} is not one of edge, cloud, fused") from None


def _error(code: object, message: object, request_id: object) -> ErrorReply:
    try:
        error_code = ErrorCode(code)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"reply carries unknown error code {code!r:.40}") from None
    return ErrorReply(error_code, str(message), str(request_id or ""))


def decode_reply(
    payload: bytes | bytearray, props: Properties | None, limits: Limits = DEFAULT_LIMITS
) -> InferReply | ErrorReply:
    """Decode a reply (outputs or error); raises only ``ProtocolError``."""
    if len(payload) > limits.max_payload_bytes:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"reply of {len(payload)} bytes is over the limit")
    first, headers = _user_properties(props, limits)
    status = first.get(P_STATUS)
    if body_kind(props) is BodyKind.RAW and status == STATUS_OK:
        return InferReply(
            outputs=tensors.decode(headers, payload, limits),
            model_name=first.get(P_MODEL) or "",
            model_version=first.get(P_MODEL_VERSION) or "",
            request_id=first.get(P_REQUEST_ID) or "",
            source=_source(first.get(P_SOURCE) or Source.CLOUD.value),
            degraded=first.get(P_DEGRADED) == "1",
            timings_ms=_timings(first.get(P_TIMING)),
        )
    doc = oip.parse_body(payload, limits)
    if "error" in doc:
        return _error(doc.get("code", status or ErrorCode.INTERNAL.value), doc["error"], doc.get("id"))
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "reply \"parameters\" must be an object")
    timings = params.get("timings_ms") or {}
    return InferReply(
        outputs=oip.decode_tensors(doc.get("outputs"), "outputs", limits),
        model_name=str(doc.get("model_name", "")),
        model_version=str(doc.get("model_version", "")),
        request_id=str(doc.get("id") or ""),
        source=_source(params.get("source", Source.CLOUD.value)),
        degraded=bool(params.get("degraded", False)),
        timings_ms={str(k): float(v) for k, v in timings.items() if isinstance(v, (int, float))}
        if isinstance(timings, dict)
        else {},
    )


def unanswerable(request_props: Properties | None) -> str:
    """Why a request that ``reply_topic`` found no topic for cannot be answered, for one log line."""
    topic = getattr(request_props, "ResponseTopic", None) if request_props is not None else None
    if isinstance(topic, str) and topic:
        return f"its Response Topic {topic[:80]!r} is no topic a reply may be published to"
    return "it names no task and no Response Topic, so there is nowhere to reply"


def reply_topic(request_props: Properties | None, default: str | None) -> str | None:
    """Where a reply goes: the request's Response Topic, else ``default`` (None: nowhere).

    A Response Topic no reply may be published to (a wildcard, ``$SYS/...``, a NUL) is nowhere too.
    """
    topic = getattr(request_props, "ResponseTopic", None) if request_props is not None else None
    if isinstance(topic, str) and topic:
        return topic if publishable(topic) else None
    return default
