"""The federated training window: the cloud's retained message telling agents when to run their SuperNode.

``{"open": true, "run": "<run id>", "task": "mnist1d", "until": <unix time>}`` while rounds run,
``{"open": false, "run": ...}`` (or an empty retained message) when they are over. An open window
is published with a Message Expiry Interval until ``until``, and agents close it at ``until``
themselves, so a coordinator that died cannot keep a fleet's SuperNodes running.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from agent.protocol.errors import ErrorCode, ProtocolError


@dataclass(frozen=True)
class TrainingWindow:
    open: bool
    run: str = ""
    task: str = ""
    until: float | None = None  # unix time; None: until the cloud closes it

    def is_open(self, now: float | None = None) -> bool:
        return self.open and (self.until is None or (time.time() if now is None else now) < self.until)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"open": self.open, "run": self.run, "task": self.task}
        if self.until is not None:
            doc["until"] = self.until
        return json.dumps(doc).encode()

    def expiry_s(self, now: float | None = None) -> int | None:
        """The Message Expiry Interval for this window's retained message (None: it never expires)."""
        if self.until is None or not self.open:
            return None
        return max(1, math.ceil(self.until - (time.time() if now is None else now)))


def decode_window(payload: bytes) -> TrainingWindow:
    """A window from its payload (empty: closed); ProtocolError naming what is wrong otherwise."""
    if not payload:
        return TrainingWindow(open=False)
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"training window is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("open"), bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "training window needs a boolean 'open'")
    until = doc.get("until")
    if until is not None and (not isinstance(until, (int, float)) or isinstance(until, bool) or not math.isfinite(until)):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"training window 'until' is {until!r}, not a unix time")
    run, task = doc.get("run", ""), doc.get("task", "")
    if not isinstance(run, str) or not isinstance(task, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "training window 'run' and 'task' must be text")
    return TrainingWindow(doc["open"], run, task, None if until is None else float(until))
