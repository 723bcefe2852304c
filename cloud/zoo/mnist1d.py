"""MNIST-1D, generated here: the procedure of Greydanus (2020), our own code, never a download.

Ten 12-point digit templates are padded, dilated, scaled, translated, given
correlated noise where the signal is flat, iid noise everywhere, sheared, and
resampled to 40 points. Same parameters as the paper's defaults, so the
paper's reference accuracies (logistic 32%, MLP 68%, CNN 94%) apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TEMPLATES = np.array(
    [
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ]
)


@dataclass(frozen=True)
class Mnist1dParams:
    """The generator's knobs; defaults are the paper's."""

    num_samples: int = 5000
    train_split: float = 0.8
    padding: tuple[int, int] = (36, 60)
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 2e-2
    shear_scale: float = 0.75
    final_seq_length: int = 40
    seed: int = 42


def templates() -> np.ndarray:
    """The ten templates, whitened, starting at 0 and scaled like the paper's."""
    x = _TEMPLATES - _TEMPLATES.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


def _resample(x: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of a 1-D signal onto ``length`` evenly spaced points."""
    return np.interp(np.linspace(0, 1, length), np.linspace(0, 1, len(x)), x)


def _gaussian_smooth(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Gaussian filter with reflected edges (radius 4 sigma), as scipy.ndimage does by default."""
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x, radius, mode="symmetric")
    return np.convolve(padded, kernel, mode="valid")


def _transform(template: np.ndarray, p: Mnist1dParams, rng: np.random.Generator) -> np.ndarray:
    low, high = p.padding
    pad = low + int(rng.random() * (high - low + 1))
    x = np.concatenate([template + 1e-8, np.zeros(pad)])
    x = _resample(x, len(template) + high)  # dilate
    x = x * (1 + p.scale_coeff * (rng.random() - 0.5))  # scale
    shift = int(rng.integers(p.max_translation))
    x = np.roll(x, shift)  # translate
    flat = x == 0
    x = np.where(flat, _gaussian_smooth(p.corr_noise_scale * rng.standard_normal(len(x))), x)
    x = x + p.iid_noise_scale * rng.standard_normal(len(x))
    x = x - p.shear_scale * (rng.random() - 0.5) * np.linspace(-0.5, 0.5, len(x))  # shear
    return _resample(x, p.final_seq_length)


def generate(p: Mnist1dParams = Mnist1dParams()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: float32 [N, 40] standardised signals and int64 labels."""
    rng = np.random.default_rng(p.seed)
    shapes = templates()
    per_class = p.num_samples // len(shapes)
    xs = np.stack([_transform(shapes[label], p, rng) for label in range(len(shapes)) for _ in range(per_class)])
    ys = np.repeat(np.arange(len(shapes)), per_class)
    order = rng.permutation(len(ys))
    xs, ys = xs[order], ys[order]
    xs = (xs - xs.mean()) / xs.std()
    split = int(len(ys) * p.train_split)
    return (xs[:split].astype(np.float32), ys[:split].astype(np.int64),
            xs[split:].astype(np.float32), ys[split:].astype(np.int64))
