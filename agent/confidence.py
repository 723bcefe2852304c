"""Calibrated probabilities and the confidence metrics the offload policies threshold.

Every metric is returned as "higher = more confident", so policies compare one
way: max_prob (top-1 probability), margin (top-1 minus top-2) and entropy
(negated, in nats: a profile's entropy threshold is an entropy ceiling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from agent.manifest import OutputKind
from agent.profile.offload import Metric


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise float32 softmax of ``logits / temperature`` (max-shifted, so no overflow), in place on a copy."""
    z = np.divide(logits, temperature, dtype=np.float32)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def output_scores(kind: OutputKind, temperature: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """What a model's first output becomes in an answer.

    Logits: calibrated probabilities. Probabilities (the graph ends in its own Softmax): as they are; a
    second softmax would flatten them ([0.37, 0.63] became [0.435, 0.565]); calibrated, softmax(log p / T).
    Any other output: as the model gave it (its own element type).
    """
    if kind == "logits":
        return lambda out: softmax(out, temperature)
    if kind == "probabilities" and temperature != 1.0:
        return lambda out: softmax(np.log(np.clip(out, 1e-12, None)), temperature)
    return lambda out: out


def top_labels(probs: np.ndarray, labels: Sequence[str] | None) -> tuple[str, ...]:
    """Each row's top class by name; () where the classes have no names (or the scores are not one per label)."""
    if not labels or probs.ndim != 2 or probs.shape[1] != len(labels):
        return ()
    return tuple(labels[i] for i in probs.argmax(axis=1))


def confidence(probs: np.ndarray, metric: Metric) -> np.ndarray:
    """One confidence per row of a [N, classes] probability array (higher = more confident)."""
    if metric == "max_prob":
        return probs.max(axis=-1)
    if metric == "margin":
        top2 = np.partition(probs, -2, axis=-1)[..., -2:]
        return top2[..., 1] - top2[..., 0]
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return (p * np.log(p)).sum(axis=-1)  # = -entropy


def threshold_to_confidence(metric: Metric, threshold: float) -> float:
    """A profile threshold on the confidence scale: entropy thresholds are ceilings in nats."""
    return -threshold if metric == "entropy" else threshold


def fuse(edge: np.ndarray, cloud: np.ndarray, cloud_weight: float) -> np.ndarray:
    """Weighted geometric mean of two probability arrays, renormalised per row."""
    log_mix = (1 - cloud_weight) * np.log(np.clip(edge, 1e-12, 1.0)) + cloud_weight * np.log(np.clip(cloud, 1e-12, 1.0))
    return softmax(log_mix)
