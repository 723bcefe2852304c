"""Error codes every fedge reply can carry, and the one exception decoding raises."""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Why a request was not answered with outputs. Values are on the wire: never rename."""

    BAD_REQUEST = "bad_request"
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    SHAPE_MISMATCH = "shape_mismatch"
    UNKNOWN_TASK = "unknown_task"
    NOT_FOUND = "not_found"  # the HTTP API: no such endpoint, or no answer to label
    OVERLOADED = "overloaded"
    EXPIRED = "expired"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A message that cannot be decoded or served; becomes an error reply, never a crash."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
