"""Shadow evaluation: the new model runs beside the old one on recent traffic before it may serve.

Recent traffic is what the sample store kept: offloaded inputs with the
cloud's answers (and users' labels where they sent feedback). Where the old
model answers right, the new one must mostly give the same answer, and it must
not be clearly less accurate against those labels; otherwise the old model
keeps serving. Agreement is counted only where the old model is right: the
kept samples are mostly the hard cases the old model was unsure of, and a
better model is meant to change its wrong answers there (measured: a
fine-tuned release more accurate on held-out data agreed with its parent on
50 % of 139 kept samples, and a gate on plain agreement refused it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agent.batching import BatcherClosed, QueueFull
from agent.profile.updates import ShadowGate
from agent.protocol import PRIORITY_MIN
from agent.runtime import LocalModel
from agent.samples import SampleStore

RESULT_TIMEOUT_S = 30.0


class NotJudged(Exception):
    """The shadow run could not finish (the queue was full, a run timed out, the agent is stopping): no verdict."""


@dataclass(frozen=True)
class Traffic:
    """Recent inputs and the best label known for each (a user's label, else the cloud's class)."""

    x: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Verdict:
    """The gate's decision and the numbers behind it."""

    passed: bool
    reason: str
    samples: int
    agreement: float | None = None
    old_accuracy: float | None = None
    new_accuracy: float | None = None

    def numbers(self) -> dict[str, float | int]:
        shown = {"samples": self.samples, "agreement": self.agreement, "old_accuracy": self.old_accuracy,
                 "new_accuracy": self.new_accuracy}
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items() if v is not None}


def recent_traffic(samples: SampleStore | None, task: str, most: int) -> Traffic:
    """The newest ``most`` kept samples of ``task`` that carry a label (none when the store is off)."""
    if samples is None or not samples.enabled:
        return Traffic(np.empty((0,)), np.empty((0,), np.int64))
    kept = samples.training_set(task, newest=most, labelled=True)
    labels = kept.labels.copy()
    has_soft = ~np.isnan(kept.soft).any(axis=1) if kept.soft.size else np.zeros(len(labels), bool)
    cloud = np.where(has_soft, np.nan_to_num(kept.soft).argmax(axis=1) if kept.soft.size else -1, -1)
    labels = np.where(labels >= 0, labels, cloud)
    usable = np.flatnonzero(labels >= 0)[-most:]
    return Traffic(kept.x[usable], labels[usable])


def predict(model: LocalModel, x: np.ndarray) -> np.ndarray:
    """Classes ``model`` gives ``x``, run through its own batcher at the lowest priority."""
    step = model.batcher.max_batch_size
    classes = []
    for start in range(0, len(x), step):
        future = model.batcher.submit((np.ascontiguousarray(x[start:start + step]),), PRIORITY_MIN)
        classes.append(np.asarray(future.result(timeout=RESULT_TIMEOUT_S)[0]).argmax(axis=-1))
    return np.concatenate(classes) if classes else np.empty((0,), np.int64)


def evaluate(old: LocalModel, new: LocalModel, traffic: Traffic, gate: ShadowGate) -> Verdict:
    """Run both models on ``traffic`` and apply ``gate``; NotJudged when live traffic or a stop cut it short."""
    n = len(traffic.labels)
    if n < gate.min_samples or n == 0:
        return Verdict(True, f"not shadow-evaluated: {n} recent labelled samples, the gate needs"
                       f" {gate.min_samples}; installed on its signature alone", n)
    try:
        old_classes, new_classes = predict(old, traffic.x), predict(new, traffic.x)
    except QueueFull:  # live traffic comes first
        raise NotJudged("the local queue was full") from None
    except TimeoutError:
        raise NotJudged(f"a shadow run took longer than {RESULT_TIMEOUT_S:g} s") from None
    except BatcherClosed:
        raise NotJudged("a model closed (the agent is stopping)") from None
    return judge(old_classes, new_classes, traffic.labels, gate)


def judge(old_classes: np.ndarray, new_classes: np.ndarray, labels: np.ndarray, gate: ShadowGate) -> Verdict:
    """``gate`` applied to both models' classes on the same labelled samples."""
    n = len(labels)
    old_right = old_classes == labels
    kept = int(old_right.sum())
    agreement = float((new_classes[old_right] == old_classes[old_right]).mean()) if kept else 1.0
    old_accuracy = float(old_right.mean())
    new_accuracy = float((new_classes == labels).mean())
    measured = Verdict(True, f"passed the shadow gate on {n} recent samples", n, agreement, old_accuracy, new_accuracy)
    if agreement < gate.min_agreement:
        return replace(measured, passed=False, reason=f"keeps the running model's answer on {agreement:.0%} of the"
                       f" {kept} recent samples it answers right; the gate needs {gate.min_agreement:.0%}")
    if new_accuracy < old_accuracy - gate.max_accuracy_drop:
        return replace(measured, passed=False, reason=f"accuracy against the cloud's labels {new_accuracy:.0%},"
                       f" the running model's {old_accuracy:.0%}: more than {gate.max_accuracy_drop:.0%} worse")
    return measured
