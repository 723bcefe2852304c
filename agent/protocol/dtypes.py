"""The tensor element types fedge carries, by wire name, numpy type and OIP v2 datatype."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.protocol.errors import ErrorCode, ProtocolError


@dataclass(frozen=True)
class DType:
    """One supported element type; ``numpy`` is always explicitly little-endian."""

    name: str
    oip: str
    numpy: np.dtype


_ALL = (
    DType("float32", "FP32", np.dtype("<f4")),
    DType("float64", "FP64", np.dtype("<f8")),
    DType("float16", "FP16", np.dtype("<f2")),
    DType("int8", "INT8", np.dtype("i1")),
    DType("uint8", "UINT8", np.dtype("u1")),
    DType("int16", "INT16", np.dtype("<i2")),
    DType("uint16", "UINT16", np.dtype("<u2")),
    DType("int32", "INT32", np.dtype("<i4")),
    DType("uint32", "UINT32", np.dtype("<u4")),
    DType("int64", "INT64", np.dtype("<i8")),
    DType("uint64", "UINT64", np.dtype("<u8")),
    DType("bool", "BOOL", np.dtype("?")),
)
BY_NAME = {d.name: d for d in _ALL}
BY_OIP = {d.oip: d for d in _ALL}
SUPPORTED = tuple(d.name for d in _ALL)
_BY_LAYOUT = {(d.numpy.kind, d.numpy.itemsize): d for d in _ALL}  # byte order aside, each layout is one type


def by_name(name: str) -> DType:
    """Look up a wire dtype name (``float32``), or raise ``unsupported_dtype``."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_DTYPE, f"dtype {name!r} is not supported; use one of {', '.join(SUPPORTED)}"
        ) from None


def by_oip(datatype: str) -> DType:
    """Look up an OIP v2 datatype (``FP32``), or raise ``unsupported_dtype``."""
    try:
        return BY_OIP[datatype]
    except KeyError:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_DTYPE,
            f"datatype {datatype!r} is not supported; use one of {', '.join(BY_OIP)}",
        ) from None


def of_array(array: np.ndarray) -> DType:
    """The wire dtype of a numpy array (any byte order), or raise ``unsupported_dtype``; one dict lookup."""
    found = _BY_LAYOUT.get((array.dtype.kind, array.dtype.itemsize))
    if found is not None:
        return found
    raise ProtocolError(ErrorCode.UNSUPPORTED_DTYPE, f"numpy dtype {array.dtype} is not supported")
