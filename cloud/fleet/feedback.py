"""Accuracy on labelled feedback, per model version, from the fleet's heartbeats into the registry.

An agent's heartbeat carries ``feedback`` (agent/feedback.py): its labelled
answers per task, model name and version, cumulative since it started, and a
``session`` that is new at every start. The registry keeps each device's latest
counts per session (a restart starts a new session from zero, and the old
session's counts stay), so the sum over devices and sessions neither loses nor
double counts. Each version whose sum changed gets the metrics
``feedback_accuracy`` and ``feedback_n``; serving ranks models by them once
enough answers were labelled (cloud/serving/served.py).

The task comes from the heartbeat itself: the agent knows which task each
answer served, so no model-name convention has to be trusted. A version the
registry does not know yet (served from the store, never promoted) is added as
staged. Versions that are not integers (an agent serving a local model file)
have no registry entry and are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from agent.config.validation_errors import describe
from agent.decimal_text import decimal
from agent.protocol.topics import check_segment
from cloud.registry.base import Registry

log = logging.getLogger(__name__)
FEEDBACK_ACCURACY = "feedback_accuracy"
FEEDBACK_N = "feedback_n"
VersionKey = tuple[str, str, int]  # task, model name, version
MAX_COUNT = 2**31 - 1  # fits PostgreSQL's INTEGER; a device claiming more is lying or broken
MAX_ENTRIES = 256  # counted versions one heartbeat may carry


class _Count(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: StrictInt = Field(ge=0, le=MAX_COUNT)
    correct: StrictInt = Field(ge=0, le=MAX_COUNT)

    @model_validator(mode="after")
    def _at_most_n(self) -> _Count:
        if self.correct > self.n:
            raise ValueError(f"correct ({self.correct}) is more than n ({self.n})")
        return self


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")
    session: str = Field(min_length=1, max_length=128)
    tasks: dict[str, dict[str, dict[str, _Count]]]

    @model_validator(mode="after")
    def _bounded(self) -> _Section:
        entries = sum(len(versions) for names in self.tasks.values() for versions in names.values())
        if entries > MAX_ENTRIES:
            raise ValueError(f"{entries} counted versions; at most {MAX_ENTRIES} per heartbeat")
        for task, names in self.tasks.items():
            check_segment(task, "task")
            for name in names:
                check_segment(name, "model name")
        return self


@dataclass(frozen=True)
class FeedbackReport:
    """One device's cumulative counts in one session: version -> (n, correct)."""

    session: str
    counts: dict[VersionKey, tuple[int, int]]


def feedback_of(heartbeat: dict[str, Any]) -> FeedbackReport | None:
    """The heartbeat's feedback counts; None when it has none (an older agent); ValueError naming what is wrong."""
    section = heartbeat.get("feedback")
    if section is None:
        return None
    try:
        parsed = _Section.model_validate(section)
    except ValidationError as exc:
        raise ValueError(f"bad feedback section: {describe(exc)}") from None
    counts = {(task, name, number): (c.n, c.correct)
              for task, names in parsed.tasks.items() for name, versions in names.items()
              for version, c in versions.items()
              if (number := decimal(version)) is not None and 0 < number <= MAX_COUNT and c.n > 0}
    return FeedbackReport(parsed.session, counts)


def record_feedback(registry: Registry, device_id: str, heartbeat: dict[str, Any]) -> None:
    """Keep the heartbeat's feedback counts and rewrite the metrics of each version whose fleet total changed.

    ValueError when the feedback section is malformed (nothing is written then).
    """
    report = feedback_of(heartbeat)
    if report is None or not report.counts:
        return
    totals = registry.record_feedback(device_id, report.session, report.counts)
    for (task, name, version), (n, correct) in totals.items():
        try:
            registry.update_model_metrics(task, name, version, {FEEDBACK_ACCURACY: correct / n,
                                                                FEEDBACK_N: n})
        except KeyError:  # a version the cloud never registered: devices do not create models, counts wait
            continue
