"""Which model versions a worker serves, and each one loaded with its live metrics.

A task may have several cloud models (``<task>-cloud``, ``<task>-cloud-small``,
...): requests then pick among them by accuracy and expected latency. Which
versions are served is decided in one place, ``served_models``: the newest
verified version of each ``<task>-cloud*`` name in the store, or, for a task
the registry has active cloud versions of, exactly those (so a fresh registry
serves what the store holds, and promote/rollback decide from then on). The
registry also holds the edge models a rollout made active; those are never
served here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.confidence import output_scores
from agent.feeds import Rows, answer_specs, named
from agent.manifest import ManifestError, OutputKind, TensorSpec
from agent.model_store import ModelStore, StoredModel
from agent.session import open_session
from cloud.fleet.feedback import FEEDBACK_ACCURACY, FEEDBACK_N
from cloud.serving.latency import LatencyEwma

log = logging.getLogger(__name__)
# A task's models rank by their accuracy on the fleet's labelled feedback (the registry's "feedback_accuracy",
# written by cloud/fleet/feedback.py) once every one of them has at least FEEDBACK_MIN_N labelled answers, since that
# is the traffic they serve; until then all of them by the zoo's "test_accuracy" from their manifests: the
# offloaded inputs are the hard ones, so one model's feedback accuracy is no match for another's test accuracy.
# Read when a worker loads its models.
FEEDBACK_MIN_N = 50
ACCURACY_KEYS = ("test_accuracy",)


class ActiveVersions(Protocol):
    """What serving needs of the registry (cloud.registry.Registry has it)."""

    def active(self, task: str) -> Sequence[Any]:
        """Records with ``.name``, ``.version`` and ``.metrics`` of the task's active versions."""

    def model(self, task: str, name: str, version: int) -> Any | None:
        """One version's record (with ``.metrics``), or None."""


def cloud_names(store: ModelStore, task: str) -> list[str]:
    """The task's cloud model names: ``<task>-cloud`` and its variants."""
    return [name for name in store.names(task) if name.startswith(f"{task}-cloud")]


def _newest_verified(store: ModelStore, task: str, name: str) -> StoredModel | None:
    for version in reversed(store.versions(task, name)):
        try:
            return store.verified(task, name, version)
        except ManifestError as exc:
            log.warning("not serving %s/%s v%s: %s", task, name, version, exc)
    return None


def served_models(store: ModelStore, registry: ActiveVersions | None = None,
                  only: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[StoredModel]]:
    """Task -> the verified versions to serve.

    A task with active versions of its cloud models (``<task>-cloud*``, or the names ``only`` gives) in the
    registry: exactly those (the ones that verify). Otherwise: the newest verified version of each such name.
    ``only`` (task -> names, from the serve config) narrows either to the names given.
    """
    served: dict[str, list[StoredModel]] = {}
    for task in sorted(set(store.tasks()) | set(only or {})):
        if only is not None and task not in only:
            continue
        names = list(only[task]) if only is not None else cloud_names(store, task)
        active = [r for r in registry.active(task) if r.name in names] if registry is not None else []
        if not active:
            missing = [name for name in names if not store.versions(task, name)]
            if missing:
                raise LookupError(f"models.{task}: {', '.join(missing)} not in the store {store.root}; it holds "
                                  f"{', '.join(store.names(task)) or 'no model of that task'}")
            found = [_newest_verified(store, task, name) for name in names]
        else:
            found = []
            for record in active:
                try:
                    found.append(store.verified(task, record.name, int(record.version)))
                except ManifestError as exc:
                    log.warning("not serving active %s/%s v%s: %s", task, record.name, record.version, exc)
        kept = [stored for stored in found if stored is not None]
        if kept:
            served[task] = kept
    return served


@dataclass
class ServedModel:
    """One loaded model: its session, what it is, and what it costs (accuracy, run time by batch size)."""

    task: str
    name: str
    version: str
    session: Any
    inputs: list[TensorSpec]  # the model's inputs as its manifest declares them (shape None: any size, e.g. the batch)
    answers: list[TensorSpec]  # the outputs as answers name them (agent.feeds.answer_specs)
    kind: OutputKind  # what the first output holds: with class scores, answers carry them calibrated
    scores: Callable[[np.ndarray], np.ndarray]  # the first output as answers carry it (agent.confidence)
    accuracy: float | None
    latency: LatencyEwma = field(default_factory=LatencyEwma)
    labels: list[str] | None = None  # the classes' names (manifest), for answers to name their top class

    def run(self, x: Rows) -> Rows:
        """Every output for a batch (the first calibrated), timing the run into the latency EWMA."""
        started = time.perf_counter()
        first, *rest = self.session.run(None, named(x, self.inputs))
        self.latency.observe(len(x[0]), (time.perf_counter() - started) * 1000)
        return self.scores(first), *rest

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "accuracy": self.accuracy, "latency_ms": self.latency.snapshot()}


def accuracy_of(metrics: Mapping[str, float], live: Mapping[str, float] | None = None) -> float | None:
    """Feedback accuracy from the registry's ``live`` metrics when enough labels back it, else the manifest's."""
    if live and FEEDBACK_ACCURACY in live and live.get(FEEDBACK_N, 0) >= FEEDBACK_MIN_N:
        return float(live[FEEDBACK_ACCURACY])
    return next((float(metrics[k]) for k in ACCURACY_KEYS if k in metrics), None)


def load_model(stored: StoredModel, threads: int, max_batch: int, live: Mapping[str, float] | None = None
               ) -> ServedModel:
    """Open a session and seed its latency with one run at batch 1 and one at ``max_batch``.

    ``live``: the version's registry metrics, for its feedback accuracy.

    A first, untimed run allocates the session's buffers, so no request pays
    for it and it does not inflate the batch-1 estimate.
    """
    m = stored.manifest
    model = ServedModel(m.task, m.name, str(m.version), open_session(stored.model_path, intra_op_threads=threads),
                        m.inputs, answer_specs(m.kind, m.outputs), m.kind, output_scores(m.kind, m.temperature),
                        accuracy_of(m.metrics, live), labels=m.labels)

    def zeros(batch: int) -> Rows:
        return tuple(np.zeros([batch, *(d or 1 for d in spec.shape[1:])], dtype=spec.dtype) for spec in m.inputs)

    model.session.run(None, named(zeros(1), m.inputs))
    for batch in sorted({1, max_batch}):
        model.run(zeros(batch))
    return model


def require_served(store: ModelStore, registry: ActiveVersions | None = None,
                   only: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[StoredModel]]:
    """``served_models``, where nothing to serve is an error that says how to get a model."""
    served = served_models(store, registry, only)
    if not served:
        raise LookupError(f"the store {store.root} holds no <task>-cloud model to serve; train one first: "
                          "fedge-cloud train --task mnist1d --model cloud")
    return served


def load_served(store: ModelStore, threads: int, max_batch: int, registry: ActiveVersions | None = None,
                only: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[ServedModel]]:
    """Every served model loaded and warmed up, by task."""
    served = require_served(store, registry, only)

    def live(stored: StoredModel) -> Mapping[str, float] | None:
        m = stored.manifest
        record = registry.model(m.task, m.name, m.version) if registry is not None else None
        return record.metrics if record is not None else None

    loaded = {}
    for task, versions in served.items():
        metrics = [live(s) for s in versions]
        if not all(m and m.get(FEEDBACK_N, 0) >= FEEDBACK_MIN_N for m in metrics):
            metrics = [None] * len(versions)  # one measure for all of a task's models, or none
        loaded[task] = [load_model(s, threads, max_batch, m) for s, m in zip(versions, metrics, strict=True)]
    return loaded
