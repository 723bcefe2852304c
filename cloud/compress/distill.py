"""Knowledge distillation: the edge student learns the cloud teacher's soft labels.

The loss mixes KL divergence to the teacher's temperature-softened outputs
with cross-entropy to the hard labels (Hinton et al. 2015); ``gain`` reports
what the soft labels add over hard labels alone, same student, same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from agent.federated.architectures import ArchConfig, build
from cloud.zoo.tasks import Dataset
from cloud.zoo.train import accuracy, logits_of, seed_everything, train_classifier


@dataclass(frozen=True)
class DistillSettings:
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the distillation term; 1 - alpha on the hard labels
    epochs: int = 30


def distill(student: nn.Module, teacher: nn.Module, data: Dataset, settings: DistillSettings, *,
            seed: int, progress: bool = False, description: str = "distil") -> nn.Module:
    """Train ``student`` in place on hard labels and the teacher's outputs for ``data.x_train``."""
    generator = seed_everything(seed)
    return train_classifier(
        student, data.x_train, data.y_train, epochs=settings.epochs, generator=generator,
        teacher=teacher, alpha=settings.alpha, temperature=settings.temperature,
        description=description, progress=progress,
    )


@dataclass(frozen=True)
class DistillGain:
    distilled_accuracy: float
    hard_label_accuracy: float

    @property
    def gain(self) -> float:
        return self.distilled_accuracy - self.hard_label_accuracy


def distillation_gain(config: ArchConfig, teacher: nn.Module, data: Dataset, settings: DistillSettings, *,
                      seed: int) -> tuple[nn.Module, DistillGain]:
    """Train the same student twice from the same seed, with and without the teacher; return the distilled one."""
    seed_everything(seed)
    student = distill(build(config), teacher, data, settings, seed=seed)
    seed_everything(seed)
    plain = build(config)
    train_classifier(plain, data.x_train, data.y_train, epochs=settings.epochs, generator=seed_everything(seed),
                     progress=False)
    return student, DistillGain(
        distilled_accuracy=accuracy(logits_of(student, data.x_test), data.y_test),
        hard_label_accuracy=accuracy(logits_of(plain, data.x_test), data.y_test),
    )
