"""The budget policy's sorted window gives the thresholds a full quantile of the window would."""

from __future__ import annotations

import numpy as np

from agent.policy import OffloadBudget


def _reference_thresholds(confidences: np.ndarray, target: float, window: int) -> list[float]:
    """The controller written the plain way: numpy's quantile of the last ``window`` values, every time."""
    realised, thresholds = target, []
    for i, confidence in enumerate(confidences):
        recent = confidences[max(0, i + 1 - window):i + 1]
        if len(recent) < OffloadBudget._WARMUP:
            thresholds.append(float("-inf"))
            continue
        threshold = float(np.quantile(recent, min(1.0, max(0.0, 2 * target - realised))))
        realised += (float(confidence <= threshold) - realised) / window
        thresholds.append(threshold)
    return thresholds


def test_thresholds_match_a_full_quantile_of_the_window_with_ties_and_drift() -> None:
    rng = np.random.default_rng(3)
    stream = np.concatenate([rng.random(1500), rng.random(1500) * 0.4, np.round(rng.random(1000), 1)])
    for window in (25, 400):
        policy = OffloadBudget(0.2, window)
        ours = []
        for confidence in stream:
            policy.wants_offload(float(confidence))
            ours.append(policy.threshold)
        assert np.allclose(ours, _reference_thresholds(stream, 0.2, window), rtol=0, atol=1e-12)
