"""Deterministic training of zoo models, with optional soft targets from a teacher.

Determinism matters: two trainings with the same seed must give the same
model, so a compression result or a federated round can be reproduced.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from cloud.zoo.augment import Augment


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and return a generator for shuffling; CPU kernels are then deterministic."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    generator: torch.Generator,
    batch_size: int = 100,
    max_lr: float = 1e-2,
    teacher: nn.Module | None = None,
    alpha: float = 0.5,
    temperature: float = 4.0,
    augment: Augment | None = None,
    description: str = "train",
    progress: bool = True,
) -> nn.Module:
    """Train with AdamW and a one-cycle schedule, shuffling with ``generator`` (see seed_everything).

    With a ``teacher`` the loss is distillation:
    ``alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE(labels)``,
    the teacher seeing the same (augmented) batch as the student.
    """
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    if teacher is not None:
        teacher.eval()
    steps_per_epoch = max(1, -(-len(ys) // batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=max_lr / 10, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=epochs * steps_per_epoch)
    bar = tqdm(range(epochs), desc=description, unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        model.train()
        order = torch.randperm(len(ys), generator=generator)
        total = 0.0
        for start in range(0, len(ys), batch_size):
            index = order[start:start + batch_size]
            batch = xs[index] if augment is None else augment(xs[index], generator)
            logits = model(batch)
            loss = F.cross_entropy(logits, ys[index])
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(batch) / temperature, dim=1)
                kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
                loss = alpha * temperature**2 * kd + (1 - alpha) * loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        bar.set_postfix(loss=f"{total / len(ys):.4f}")
    model.eval()
    return model


@torch.no_grad()
def logits_of(model: nn.Module, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Model outputs for a whole array, in eval mode."""
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)])


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean())
