"""Accuracy on labelled feedback, counted per model version for the heartbeat.

A user labels an answer after the fact (``Agent.feedback``, the HTTP feedback
endpoint). To tell whether that answer was right, the agent remembers for the
last ``capacity`` answers which model version gave it and its probabilities;
feedback for an older answer is not counted. Labelled answers are counted per
(task, model name, version), cumulative since this agent started. ``session``
is new at every start, so the cloud can tell a restart (new session, counts
from zero) from more feedback in the same run and sum both without double counting.

What is counted, and why only that: an answer of one row (a label names one
class) that one model gave: edge or cloud. A fused answer is neither model's
prediction, so it counts for no version. An answer's first label counts; a
second label for the same request is not counted again.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from typing import Any

from agent.protocol import InferReply, Source

DEFAULT_CAPACITY = 4096
_COUNTED = (Source.EDGE, Source.CLOUD)


class FeedbackTally:
    """Recent answers (bounded, oldest forgotten first) and labelled-answer counts per model version."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.session = secrets.token_hex(8)
        self._answers: OrderedDict[str, tuple[str, str, str, int, int]] = OrderedDict()  # + predicted, classes
        self._counts: dict[tuple[str, str, str], list[int]] = {}  # (task, name, version) -> [n, correct]
        self._lock = threading.Lock()

    def answered(self, task: str, reply: InferReply) -> None:
        """Remember a final one-row answer's prediction (never its array: a row may be a view of a whole batch)."""
        if reply.source not in _COUNTED:
            return
        probs = next(iter(reply.outputs.values()))
        if probs.ndim != 2 or len(probs) != 1:  # one label cannot judge several rows
            return
        predicted, classes = int(probs.argmax()), probs.shape[1]  # one row: the flat argmax is its class
        with self._lock:
            self._answers[reply.request_id] = (task, reply.model_name, reply.model_version, predicted, classes)
            if len(self._answers) > self.capacity:
                self._answers.popitem(last=False)

    def feedback(self, request_id: str, label: int, task: str | None = None) -> bool:
        """Count ``label`` for the remembered answer to ``request_id`` (of ``task``, when given); False when none.

        ValueError (and nothing counted or forgotten) when the label names no class of that answer.
        """
        with self._lock:
            answer = self._answers.get(request_id)
            if answer is None or (task is not None and answer[0] != task):
                return False
            task, name, version, predicted, classes = answer
            if not 0 <= label < classes:
                raise ValueError(f"label {label} is not a class of this answer (0 to {classes - 1})")
            del self._answers[request_id]
            counts = self._counts.setdefault((task, name, version), [0, 0])
            counts[0] += 1
            counts[1] += predicted == label
        return True

    def heartbeat(self) -> dict[str, Any]:
        """``{"session": id, "tasks": {task: {name: {version: {"n": int, "correct": int}}}}}``."""
        with self._lock:
            counts = [(key, n, correct) for key, (n, correct) in self._counts.items()]
        tasks: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
        for (task, name, version), n, correct in counts:
            tasks.setdefault(task, {}).setdefault(name, {})[version] = {"n": n, "correct": correct}
        return {"session": self.session, "tasks": tasks}
