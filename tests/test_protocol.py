"""The wire codec: round trips, and bad input that only ever yields ProtocolError."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.protocol import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_TENSORS,
    SUPPORTED_DTYPES,
    BodyKind,
    ErrorCode,
    ErrorReply,
    InferReply,
    InferRequest,
    Limits,
    ProtocolError,
    Source,
    Topics,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    reply_topic,
)
from agent.protocol.binary import binary_outputs, split_body
from agent.protocol.codec import decode_document
from agent.protocol.limits import DEFAULT_LIMITS

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def arrays_of(dtype_name: str) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.dtype(dtype_name), shapes)


any_array = st.sampled_from(SUPPORTED_DTYPES).flatmap(arrays_of)


def props_with(content_type: str | None = None, pairs: list[tuple[str, str]] | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if content_type is not None:
        props.ContentType = content_type
    if pairs:
        props.UserProperty = pairs
    return props


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@SETTINGS
@given(array=any_array, kind=st.sampled_from(list(BodyKind)), priority=st.integers(0, 9))
def test_request_round_trip_every_dtype_and_shape(array: np.ndarray, kind: BodyKind, priority: int) -> None:
    if kind is BodyKind.JSON and array.dtype.kind == "f":
        array = np.nan_to_num(array, nan=0.5, posinf=1.0, neginf=-1.0)  # JSON has no NaN/inf
    request = InferRequest("mnist1d", {"input": array}, priority=priority, timeout_ms=1500, kind=kind, model="edge")
    payload, props = encode_request(request, response_topic="fedge/v1/device/a/reply", correlation_data=b"\x01\x02")
    decoded = decode_request("mnist1d", payload, props)
    assert same(decoded.tensor, array)
    assert (decoded.request_id, decoded.priority, decoded.timeout_ms, decoded.model, decoded.kind) == (
        request.request_id, priority, 1500, "edge", kind,
    )
    assert props.MessageExpiryInterval == 2


@SETTINGS
@given(output=any_array, kind=st.sampled_from(list(BodyKind)), degraded=st.booleans())
def test_reply_round_trip(output: np.ndarray, kind: BodyKind, degraded: bool) -> None:
    if kind is BodyKind.JSON and output.dtype.kind == "f":
        output = np.nan_to_num(output, nan=0.5, posinf=1.0, neginf=-1.0)
    reply = InferReply({"probs": output}, "mnist1d-cloud", "3", "r1", Source.FUSED, degraded, {"cloud": 1.25})
    payload, props = encode_reply(reply, kind)
    decoded = decode_reply(payload, props)
    assert isinstance(decoded, InferReply)
    assert same(decoded.outputs["probs"], output)
    assert (decoded.model_name, decoded.model_version, decoded.source, decoded.degraded) == (
        "mnist1d-cloud", "3", Source.FUSED, degraded,
    )
    assert decoded.timings_ms == {"cloud": 1.25}


@pytest.mark.parametrize("kind", list(BodyKind))
def test_error_reply_round_trip_and_correlation_echo(kind: BodyKind) -> None:
    request_props = props_with(CONTENT_TYPE_JSON)
    request_props.CorrelationData = b"corr-42"
    payload, props = encode_reply(ErrorReply(ErrorCode.SHAPE_MISMATCH, "expected [N, 40]", "r9"), kind, request_props)
    assert props.CorrelationData == b"corr-42"
    decoded = decode_reply(payload, props)
    assert decoded == ErrorReply(ErrorCode.SHAPE_MISMATCH, "expected [N, 40]", "r9")
    assert json.loads(payload)["code"] == "shape_mismatch"


def test_reply_without_correlation_still_encodes_and_goes_to_default_topic() -> None:
    reply = InferReply({"probs": np.zeros((1, 10), np.float32)}, "m", "1")
    payload, props = encode_reply(reply, BodyKind.RAW, props_with(CONTENT_TYPE_TENSORS))
    assert not hasattr(props, "CorrelationData")
    assert isinstance(decode_reply(payload, props), InferReply)
    assert reply_topic(props_with(), "fedge/v1/replies/mnist1d") == "fedge/v1/replies/mnist1d"
    with_topic = props_with()
    with_topic.ResponseTopic = "fedge/v1/device/a/reply"
    assert reply_topic(with_topic, "x") == "fedge/v1/device/a/reply"
    for hostile in ("a/+/b", "a/#", "$SYS/x", "a\0b"):
        with_topic.ResponseTopic = hostile
        assert reply_topic(with_topic, "x") is None, hostile  # no reply may go there, and none to the default
    assert reply_topic(props_with(), None) is None


def test_oip_json_body_from_a_generic_client() -> None:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]})
    request = decode_request("mnist1d", body.encode(), None)
    assert request.kind is BodyKind.JSON
    assert request.tensor.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert request.tensor.dtype == np.float32


@pytest.mark.parametrize(
    ("payload", "pairs", "content_type", "code", "words"),
    [
        (b"\x00" * 16, [("fedge-tensor", "input;float32;100000,100000")], None, ErrorCode.SHAPE_MISMATCH, "more than"),
        (b"\x00" * 16, [("fedge-tensor", "input;float32;1,40")], None, ErrorCode.SHAPE_MISMATCH, "160 bytes but the body has 16"),
        (b"\x00" * 8, [("fedge-tensor", "input;complex64;1")], None, ErrorCode.UNSUPPORTED_DTYPE, "complex64"),
        (b"\x00" * 4, [("fedge-tensor", "input;float32;1,x")], None, ErrorCode.SHAPE_MISMATCH, "integers"),
        (b"\x00" * 4, [("fedge-tensor", "input-float32-1")], None, ErrorCode.BAD_REQUEST, "name;dtype;shape"),
        (b"{nope", [], None, ErrorCode.BAD_REQUEST, "not valid JSON"),
        (b"[1,2]", [], CONTENT_TYPE_JSON, ErrorCode.BAD_REQUEST, "must be an object"),
        (b"hello", [], "text/plain", ErrorCode.BAD_REQUEST, "content type"),
        (json.dumps({"inputs": [{"name": "i", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}).encode(),
         [], None, ErrorCode.SHAPE_MISMATCH, "needs 4 values"),
        (json.dumps({"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode(),
         [], None, ErrorCode.UNSUPPORTED_DTYPE, "BYTES"),
        (json.dumps({"inputs": [{"name": "i", "shape": [1], "datatype": "FP32", "data": [1]}],
                     "parameters": {"priority": 42}}).encode(), [], None, ErrorCode.BAD_REQUEST, "priority"),
    ],
)
def test_bad_requests_name_the_problem(
    payload: bytes, pairs: list[tuple[str, str]], content_type: str | None, code: ErrorCode, words: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request("mnist1d", payload, props_with(content_type, pairs))
    assert info.value.code is code
    assert words in info.value.message


def test_lying_shape_is_refused_before_any_allocation() -> None:
    pairs = [("fedge-tensor", "input;float64;65536,65536,65536")]
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decode_request("mnist1d", b"\x00" * 64, props_with(CONTENT_TYPE_TENSORS, pairs))
        json_body = json.dumps({"inputs": [{"name": "i", "shape": [1 << 30, 1 << 30], "datatype": "FP64", "data": [0]}]})
        with pytest.raises(ProtocolError):
            decode_request("mnist1d", json_body.encode(), None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_oversize_payload_is_refused_by_length() -> None:
    limits = Limits(max_payload_bytes=1024)
    with pytest.raises(ProtocolError, match="over the 1024-byte limit"):
        decode_request("mnist1d", b"\x00" * 2048, props_with(CONTENT_TYPE_TENSORS), limits)


property_pairs = st.lists(
    st.tuples(
        st.sampled_from(["fedge-tensor", "fedge-priority", "fedge-timeout-ms", "fedge-fusion", "fedge-model",
                         "fedge-request-id", "fedge-status", "x"]),
        st.one_of(
            st.text(max_size=30),
            st.builds(lambda n, d, s: f"{n};{d};{','.join(map(str, s))}",
                      st.sampled_from(["input", ""]), st.sampled_from([*SUPPORTED_DTYPES, "bogus"]),
                      st.lists(st.integers(-3, 1 << 40), max_size=9)),
        ),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.one_of(st.binary(max_size=256), st.text(max_size=100).map(str.encode)),
    pairs=property_pairs,
    content_type=st.sampled_from([None, CONTENT_TYPE_JSON, CONTENT_TYPE_TENSORS, "text/plain"]),
)
def test_arbitrary_input_gives_a_request_or_a_protocol_error(
    payload: bytes, pairs: list[tuple[str, str]], content_type: str | None
) -> None:
    props = props_with(content_type, pairs)
    for decode in (lambda: decode_request("mnist1d", payload, props), lambda: decode_reply(payload, props)):
        try:
            result = decode()
        except ProtocolError as exc:
            assert isinstance(exc.code, ErrorCode) and exc.message
        else:
            assert isinstance(result, (InferRequest, InferReply, ErrorReply))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
tensor_like = st.fixed_dictionaries(
    {"name": json_values | st.just("input"), "shape": json_values | st.lists(st.integers(-1, 4), max_size=3),
     "datatype": json_values | st.sampled_from(["FP32", "INT8", "BOOL", "UINT64"]), "data": json_values},
)


@settings(max_examples=300, deadline=None)
@given(doc=st.fixed_dictionaries({"inputs": st.lists(tensor_like, max_size=3) | json_values,
                                  "outputs": st.lists(tensor_like, max_size=2) | json_values},
                                 optional={"parameters": json_values, "id": json_values, "error": json_values}))
def test_arbitrary_json_documents_give_a_request_or_a_protocol_error(doc: dict) -> None:
    payload = json.dumps(doc).encode()
    for decode in (lambda: decode_request("mnist1d", payload, None), lambda: decode_reply(payload, None)):
        try:
            decode()
        except ProtocolError as exc:
            assert isinstance(exc.code, ErrorCode)


binary_tensor_like = st.fixed_dictionaries(
    {"name": st.just("input") | json_values, "shape": st.lists(st.integers(-1, 6), max_size=3) | json_values,
     "datatype": st.sampled_from(["FP32", "INT8", "BOOL", "BYTES"]) | json_values},
    optional={"parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-2, 64) | json_values}),
              "data": json_values},
)


@settings(max_examples=300, deadline=None)
@given(doc=st.fixed_dictionaries({"inputs": st.lists(binary_tensor_like, max_size=3) | json_values},
                                 optional={"outputs": json_values | st.lists(st.fixed_dictionaries(
                                     {"name": json_values}, optional={"parameters": json_values}), max_size=2),
                                     "parameters": json_values}),
       raw=st.binary(max_size=96), length=st.none() | st.integers(-2, 400).map(str) | st.text(max_size=4))
def test_arbitrary_binary_extension_bodies_give_a_request_or_a_protocol_error(doc: dict, raw: bytes,
                                                                             length: str | None) -> None:
    """The HTTP API's binary path: split the body, decode the document, choose the outputs."""
    head = json.dumps(doc).encode()
    try:
        parsed, rest = split_body(head + raw, str(len(head)) if length is None else length, DEFAULT_LIMITS)
        assert isinstance(decode_document("mnist1d", parsed, DEFAULT_LIMITS, rest), InferRequest)
        binary_outputs(parsed, ["probabilities"])
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode) and exc.message


def test_topics() -> None:
    topics = Topics("site/fedge/v1")
    assert topics.infer("mnist1d") == "site/fedge/v1/infer/mnist1d"
    assert topics.shared_infer() == "$share/workers/site/fedge/v1/infer/+"
    assert topics.task_of("site/fedge/v1/infer/digits") == "digits"
    assert topics.task_of("site/fedge/v1/infer/a/b") is None
    assert topics.task_of("other/infer/digits") is None
    assert topics.device_reply("pi-7") == "site/fedge/v1/device/pi-7/reply"
    assert topics.manifest("digits") == "site/fedge/v1/models/digits/manifest"
    for bad in ("", "a/b", "x+", "#"):
        with pytest.raises(ValueError):
            topics.device_status(bad)
    with pytest.raises(ValueError):
        Topics("fedge/#")


def test_first_occurrence_of_a_user_property_wins_and_tensors_keep_their_order() -> None:
    a, b = np.arange(3, dtype=np.int8), np.arange(2, dtype=np.float32)
    pairs = [("fedge-priority", "3"), ("fedge-tensor", "a;int8;3"), ("fedge-priority", "7"), ("fedge-model", "m1"),
             ("fedge-tensor", "b;float32;2"), ("fedge-model", "m2")]
    request = decode_request("t", a.tobytes() + b.tobytes(), props_with(CONTENT_TYPE_TENSORS, pairs))
    assert (request.priority, request.model, list(request.inputs)) == (3, "m1", ["a", "b"])
    assert same(request.inputs["a"], a) and same(request.inputs["b"], b)
    with pytest.raises(ValueError):  # arrays are read-only views of the payload
        request.inputs["a"][0] = 1
    reply_pairs = [("fedge-status", "ok"), ("fedge-source", "edge"), ("fedge-tensor", "p;int8;3"),
                   ("fedge-source", "bogus"), ("fedge-status", "bad_request")]
    reply = decode_reply(a.tobytes(), props_with(CONTENT_TYPE_TENSORS, reply_pairs))
    assert isinstance(reply, InferReply) and reply.source is Source.EDGE and same(reply.outputs["p"], a)


def test_a_header_seen_before_is_still_checked_against_the_limits_in_force() -> None:
    props = props_with(CONTENT_TYPE_TENSORS, [("fedge-tensor", "input;float32;2,3,4")])
    payload = bytes(96)
    assert decode_request("t", payload, props).tensor.shape == (2, 3, 4)
    for limits, words in ((Limits(max_dims=2), "3 dimensions"), (Limits(max_elements=10), "more than 10 elements")):
        with pytest.raises(ProtocolError, match=words):
            decode_request("t", payload, props, limits)
    assert decode_request("t", payload, props).tensor.shape == (2, 3, 4)


def test_ever_new_or_huge_tensor_headers_do_not_grow_memory() -> None:
    """Headers are remembered once parsed, but a client inventing new or huge ones cannot make that grow."""
    names = [f"{i:04d}" + "n" * 200 for i in range(1500)] + [f"{i:04d}" + "h" * 20_000 for i in range(300)]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for name in names:
            props = props_with(CONTENT_TYPE_TENSORS, [("fedge-tensor", f"{name};float32;1")])
            assert decode_request("t", bytes(4), props).inputs.keys() == {name}
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1 << 20
