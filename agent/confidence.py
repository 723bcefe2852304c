"""Calibrated probabilities and the confidence metrics the offload policies threshold.

Every metric is returned as "higher = more confident", so policies compare one
way: max_prob (top-1 probability), margin (top-1 minus top-2) and entropy
(negated, in nats: a profile's entropy threshold is an entropy ceiling).
"""

from __future__ import annotations

import numpy as np

from agent.profile.offload import Metric


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 for stability, returned as float32."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


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
