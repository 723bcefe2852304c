"""Confidence calibration: one temperature T so that softmax(logits / T) means what it says.

The agent's confidence policy thresholds calibrated probabilities, so an
over-confident edge model would keep too much. T is fitted on a validation
split by minimising negative log-likelihood (Guo et al. 2017) with a golden-
section search on log T: one parameter, no optimiser library needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0,
                               bins: int = 15) -> float:
    """ECE: how far top-1 confidence is from top-1 accuracy, averaged over equal-width confidence bins by row count.

    0 means "80 % sure" is right 80 % of the time; the offload threshold in a profile is read that way.
    """
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    confidence, right = probs.max(axis=1), probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            gap += rows.sum() * abs(confidence[rows].mean() - right[rows].mean())
    return float(gap / len(labels))


@dataclass(frozen=True)
class Calibration:
    temperature: float
    nll_before: float
    nll_after: float


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, low: float = 0.05, high: float = 20.0,
                    iterations: int = 60) -> Calibration:
    """The temperature in [low, high] minimising validation NLL (NLL is unimodal in log T)."""
    if len(labels) == 0:
        raise ValueError("temperature calibration needs validation samples")
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, math.exp(d))
    temperature = math.exp((a + b) / 2)
    return Calibration(temperature, nll(logits, labels), nll(logits, labels, temperature))
