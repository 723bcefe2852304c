"""Raw tensor bodies: little-endian bytes described by ``fedge-tensor`` user properties.

Each tensor is one user property ``fedge-tensor = name;dtype;d0,d1,...`` (MQTT
v5 keeps the order of repeated user properties) and the body is the tensors'
bytes back to back in that order. Decoding is zero-copy (arrays view the body)
and every size is checked from the headers before any memory is touched.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from agent.protocol import dtypes
from agent.protocol.errors import ErrorCode, ProtocolError
from agent.protocol.limits import Limits

TENSOR_PROPERTY = "fedge-tensor"


def check_shape(shape: Sequence[object], limits: Limits) -> tuple[int, ...]:
    """Validate a shape against the limits and return it as a tuple of ints."""
    if len(shape) > limits.max_dims:
        raise ProtocolError(
            ErrorCode.SHAPE_MISMATCH, f"shape has {len(shape)} dimensions; at most {limits.max_dims} are allowed"
        )
    dims: list[int] = []
    elements = 1
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ProtocolError(ErrorCode.SHAPE_MISMATCH, f"shape {list(shape)} must hold non-negative integers")
        elements *= dim
        if elements > limits.max_elements:
            raise ProtocolError(
                ErrorCode.SHAPE_MISMATCH,
                f"shape {list(shape)} has more than {limits.max_elements} elements",
            )
        dims.append(dim)
    return tuple(dims)


def element_count(shape: tuple[int, ...]) -> int:
    """Number of elements of a (checked) shape; 1 for a scalar."""
    count = 1
    for dim in shape:
        count *= dim
    return count


def _parse(value: str, limits: Limits) -> tuple[str, np.dtype, tuple[int, ...], int]:
    """(name, wire numpy dtype, shape, size in bytes) of one ``fedge-tensor`` header, checked against ``limits``."""
    parts = value.split(";")
    if len(parts) != 3:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"{TENSOR_PROPERTY} {value[:80]!r} must read name;dtype;shape (e.g. input;float32;1,40)"
        )
    name, dtype_name, shape_text = parts
    if not name:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{TENSOR_PROPERTY} {value[:80]!r} has an empty tensor name")
    dtype = dtypes.by_name(dtype_name).numpy
    try:
        dims = [int(d) for d in shape_text.split(",")] if shape_text else []
    except ValueError:
        raise ProtocolError(ErrorCode.SHAPE_MISMATCH,
                            f"shape {shape_text[:80]!r} is not a comma-separated list of integers") from None
    shape = check_shape(dims, limits)
    return name, dtype, shape, element_count(shape) * dtype.itemsize


# A deployment sends the same few headers on every message: parse each once. Bounded in entries and in the
# length of a cached header, so a client sending ever-new or huge headers costs evictions, not memory.
# A header that fails raises, and nothing is cached for it.
_parse_cached = functools.lru_cache(maxsize=256)(_parse)
_CACHED_HEADER_CHARS = 256


def _parse_header(value: str, limits: Limits) -> tuple[str, np.dtype, tuple[int, ...], int]:
    """``_parse``, from the cache when the header is short enough to keep."""
    return _parse_cached(value, limits) if len(value) <= _CACHED_HEADER_CHARS else _parse(value, limits)


def header(name: str, array: np.ndarray) -> str:
    """The ``fedge-tensor`` property value describing ``array``."""
    dtype = dtypes.of_array(array)
    return f"{name};{dtype.name};{','.join(map(str, array.shape))}"


def decode(headers: Sequence[str], body: bytes | bytearray, limits: Limits) -> dict[str, np.ndarray]:
    """Decode a raw body into named arrays viewing it (read-only for ``bytes``), checking sizes before touching it."""
    if not headers:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"a raw tensor body needs at least one {TENSOR_PROPERTY} property")
    if len(headers) > limits.max_tensors:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{len(headers)} tensors; at most {limits.max_tensors} are allowed")
    parsed = [_parse_header(h, limits) for h in headers]
    expected = sum(size for _, _, _, size in parsed)
    if expected != len(body):
        raise ProtocolError(
            ErrorCode.SHAPE_MISMATCH,
            f"the tensor headers describe {expected} bytes but the body has {len(body)}",
        )
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for name, dtype, shape, size in parsed:
        if name in tensors:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"tensor {name!r} appears twice")
        tensors[name] = np.ndarray(shape, dtype, body, offset)  # a view onto the body in one call (no frombuffer+reshape)
        offset += size
    return tensors


def encode(tensors: Mapping[str, np.ndarray]) -> tuple[list[str], bytes]:
    """Headers and body for named arrays, converted to little-endian where needed."""
    headers: list[str] = []
    chunks: list[bytes] = []
    for name, array in tensors.items():
        wire = dtypes.of_array(array).numpy
        headers.append(header(name, array))
        chunks.append(np.ascontiguousarray(array, dtype=wire).tobytes())
    return headers, b"".join(chunks)


def require_finite(x: np.ndarray, what: str) -> None:
    """Refuse NaN and infinity in a float input: they come out as NaN, which no answer may carry."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} takes finite numbers; the input holds NaN or infinity"
                                                   f" (or a value too large for {x.dtype})")


def fit_batch(x: np.ndarray, declared: Sequence[int | None], what: str) -> np.ndarray:
    """``x`` as a batch for a model input of shape ``declared`` (None or -1: any size), or SHAPE_MISMATCH.

    One sample without its batch axis gets one. Checked before the model runs, so a wrong shape is
    the protocol's error naming both shapes, not ONNX Runtime's text as an internal error.
    """
    if x.ndim == len(declared) - 1:
        x = x[None]
    fixed = [(i, d) for i, d in enumerate(declared) if i > 0 and d not in (None, -1)]
    if x.ndim != len(declared) or any(x.shape[i] != d for i, d in fixed) or x.shape[0] == 0:
        shape = ["N" if d in (None, -1) else d for d in declared]
        raise ProtocolError(ErrorCode.SHAPE_MISMATCH, f"{what} takes shape {shape}, got {list(x.shape)}")
    return x
