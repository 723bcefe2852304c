"""What the device table keeps from a heartbeat (docs/PROTOCOL.md "Status, heartbeat").

Only the fields the table shows are checked, and only their types: a newer
agent may send more fields, and every heartbeat is kept whole in the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config.validation_errors import describe


class _Percentiles(BaseModel):
    model_config = ConfigDict(extra="allow")
    p99: float | None = None


class _Heartbeat(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str = Field("unknown", min_length=1)
    group: str | None = Field(None, min_length=1)
    models: dict[str, int | str] = Field(default_factory=dict)
    offload_rate: float | None = Field(None, ge=0, le=1)
    latency_ms: dict[str, _Percentiles] = Field(default_factory=dict)


@dataclass(frozen=True)
class HeartbeatSummary:
    kind: str
    group: str
    models: dict[str, str]
    offload_rate: float | None
    p99_ms: float | None


def summarize(heartbeat: dict[str, Any]) -> HeartbeatSummary:
    """The device-table fields of a heartbeat; ValueError naming each bad field.

    ``group`` is the heartbeat's ``group``, else its ``kind`` (canary rollouts target groups).
    ``p99_ms`` is the worst p99 over the latency paths that have data (local, offload): the
    slowest answer a caller of that device sees, whichever path served it.
    """
    if not isinstance(heartbeat, dict):
        raise ValueError(f"a heartbeat is a JSON object, not {type(heartbeat).__name__}")
    try:
        beat = _Heartbeat.model_validate(heartbeat)
    except ValidationError as exc:
        raise ValueError(f"bad heartbeat: {describe(exc)}") from None
    p99s = [p.p99 for p in beat.latency_ms.values() if p.p99 is not None]
    return HeartbeatSummary(
        kind=beat.kind,
        group=beat.group or beat.kind,
        models={task: str(version) for task, version in beat.models.items()},
        offload_rate=beat.offload_rate,
        p99_ms=max(p99s) if p99s else None,
    )
