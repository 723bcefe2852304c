"""Which of a task's models answers a request: named, or the most accurate that fits the deadline.

Expected latency of a model = the time to drain the other models' queued jobs
+ the time to run this model's queued jobs with the request added to them (it
joins their last batch, or starts a new one when that batch is full).
Among models whose expected latency fits the request's remaining time, the
most accurate wins; when none fits, the fastest, since a late cloud answer is
worth less than a quick, slightly less accurate one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from cloud.serving.served import ServedModel


class Reason(str, Enum):
    """Why a model was chosen; counted per task and model in the worker's status."""

    NAMED = "named"  # the request asked for it
    FITS = "fits"  # the most accurate one whose expected latency fits the deadline
    FASTEST = "fastest"  # none fits: the quickest


class UnknownModel(LookupError):
    """The request named a model this worker does not serve for its task."""


@dataclass(frozen=True)
class Choice:
    model: ServedModel
    reason: Reason
    expected_ms: float


def drain_ms(model: ServedModel, jobs: int, max_batch: int) -> float:
    """Time for ``model`` to run ``jobs`` queued jobs: full batches, then the rest."""
    full, rest = divmod(jobs, max_batch)
    return full * model.latency.expected(max_batch) + (model.latency.expected(rest) if rest else 0.0)


def queue_wait_ms(models: Sequence[ServedModel], queued: Mapping[str, int], max_batch: int) -> float:
    """Time to run what is queued, per model in batches of at most ``max_batch``."""
    return sum(drain_ms(model, queued.get(model.name, 0), max_batch) for model in models)


def choose(models: Sequence[ServedModel], named: str | None, remaining_ms: float, queued: Mapping[str, int],
           max_batch: int, all_models: Sequence[ServedModel] | None = None) -> Choice:
    """Pick one of ``models`` (one task's) for a request with ``remaining_ms`` left.

    ``queued`` counts jobs waiting per model name in this worker; ``all_models``
    (every task's, default ``models``) are the ones the queue ahead will run on.
    """
    wait = queue_wait_ms(all_models if all_models is not None else models, queued, max_batch)

    def expected(model: ServedModel) -> float:  # the request joins this model's queued jobs: counted once
        ahead = queued.get(model.name, 0)
        return wait - drain_ms(model, ahead, max_batch) + drain_ms(model, ahead + 1, max_batch)

    if named is not None:  # the full name, or the part after "<task>-" ("cloud-small" for mnist1d-cloud-small)
        for model in models:
            if named in (model.name, model.name.removeprefix(f"{model.task}-")):
                return Choice(model, Reason.NAMED, expected(model))
        served = ", ".join(m.name for m in models)
        raise UnknownModel(f"model {named!r} is not served for task {models[0].task!r}; served: {served}")
    fitting = [m for m in models if expected(m) <= remaining_ms]
    if fitting:  # most accurate; unknown accuracy ranks last, ties go to the faster
        best = max(fitting, key=lambda m: (m.accuracy if m.accuracy is not None else -1.0, -expected(m)))
        return Choice(best, Reason.FITS, expected(best))
    fastest = min(models, key=expected)
    return Choice(fastest, Reason.FASTEST, expected(fastest))
