"""The three things that travel: a request, a reply with outputs, an error reply."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from agent.protocol.errors import ErrorCode

PRIORITY_MIN, PRIORITY_DEFAULT, PRIORITY_MAX = 0, 5, 9


class BodyKind(str, Enum):
    """How a body is encoded; a reply is sent in the kind of its request."""

    RAW = "raw"
    JSON = "json"


class Source(str, Enum):
    """Which side produced an answer."""

    EDGE = "edge"
    CLOUD = "cloud"
    FUSED = "fused"


_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_SEQUENCE = itertools.count()


def new_request_id() -> str:
    """A fresh request id: a random per-process prefix and a counter (unique, and no urandom per request)."""
    return f"{_ID_PREFIX}{next(_ID_SEQUENCE):08x}"


@dataclass(frozen=True)
class InferRequest:
    """An inference request for ``task``. ``inputs`` keeps order: the first is the model input.

    ``timeout_ms`` is the time left when the request was sent (relative, so devices
    without a synchronised clock still work); ``fusion`` asks the cloud to fuse its
    output with an ``edge_probs`` input using that weight on the cloud side.
    """

    task: str
    inputs: dict[str, np.ndarray]
    request_id: str = field(default_factory=new_request_id)
    priority: int = PRIORITY_DEFAULT
    timeout_ms: int | None = None
    model: str | None = None
    fusion: float | None = None
    kind: BodyKind = BodyKind.RAW

    @property
    def tensor(self) -> np.ndarray:
        """The model input (the first tensor)."""
        return next(iter(self.inputs.values()))


@dataclass(frozen=True)
class InferReply:
    """Outputs of a served request, with where they came from and what it cost."""

    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: str
    request_id: str = ""
    source: Source = Source.CLOUD
    degraded: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    labels: tuple[str, ...] = ()  # each row's top class by name, where the model's classes have names


@dataclass(frozen=True)
class ErrorReply:
    """A request that could not be served, and why, in words a person can act on."""

    code: ErrorCode
    message: str
    request_id: str = ""
