"""Training-time augmentation: random 1-pixel shifts, the standard augmentation for small digit images.

A narrow model fine-tuned on 1,300 8x8 digits overfits them; shifting each
image by up to one pixel (zero fill) in each direction gives it nine views
of every sample without changing any label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the task list names this function; only training runs it, and imports torch then
    import torch

Augment = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]


def shift_images(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image of an [N, C, H, W] batch by a random (dy, dx) in [-max_shift, max_shift], zero-filled."""
    import torch
    from torch.nn import functional as F

    n, _, height, width = x.shape
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator)
    padded = F.pad(x, (max_shift,) * 4)
    out = torch.empty_like(x)
    for shift_y in range(-max_shift, max_shift + 1):
        for shift_x in range(-max_shift, max_shift + 1):
            rows = ((dy == shift_y) & (dx == shift_x)).nonzero().flatten()
            top, left = max_shift - shift_y, max_shift - shift_x
            out[rows] = padded[rows, :, top:top + height, left:left + width]
    return out
