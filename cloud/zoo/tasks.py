"""The task registry: each task's data, and its cloud and edge architectures."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agent.federated.architectures import ArchConfig
from cloud.zoo.augment import Augment, shift_images
from cloud.zoo.mnist1d import Mnist1dParams, generate, templates

VALIDATION_FRACTION = 0.1  # the end of the training set no zoo model trains on: compression chooses on it


class UnknownTask(ValueError):
    """A task name the zoo does not know; the message lists the known ones."""


class DataTooSmall(ValueError):
    """Data options too small to hold out a validation part; the message says how many samples are needed."""


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays; labels are int64 class indices. ``validation``: rows given apart (a user's data)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    validation: tuple[np.ndarray, np.ndarray] | None = None

    def validation_split(self, fraction: float = VALIDATION_FRACTION) -> tuple[Dataset, tuple[np.ndarray, np.ndarray]]:
        """The validation rows given apart, else the last ``fraction`` of the training set held out.

        For model selection and calibration: no model trains on them.
        """
        if self.validation is not None:
            return Dataset(self.x_train, self.y_train, self.x_test, self.y_test), self.validation
        classes = len(np.unique(np.concatenate([self.y_train, self.y_test])))
        held = int(len(self.y_train) * fraction)
        if held < classes:
            raise DataTooSmall(
                f"{len(self.y_train)} training samples are too few to hold out {fraction:.0%} with at least one per"
                f" class ({classes} classes): at least {math.ceil(classes / fraction)} are needed"
            )
        cut = len(self.y_train) - held
        rest = Dataset(self.x_train[:cut], self.y_train[:cut], self.x_test, self.y_test)
        return rest, (self.x_train[cut:], self.y_train[cut:])


@dataclass(frozen=True)
class DataOptions:
    """Size and seed of a generated data set; ignored where the data is fixed."""

    train_size: int = 4000
    test_size: int = 1000
    seed: int = 42

    def split_record(self) -> dict[str, Any]:
        """What a manifest's ``recipe.trained`` records about the data, so compress can tell which rows are unseen."""
        return {"held_out": VALIDATION_FRACTION, "data": asdict(self)}


@dataclass(frozen=True)
class Task:
    """One task of the zoo."""

    name: str
    description: str
    load: Callable[[DataOptions], Dataset]
    models: dict[str, ArchConfig]
    epochs: dict[str, int]
    finetune_epochs: int = 30  # a compressed model's fine-tuning, unless the recipe says otherwise
    augment: Augment | None = None  # applied to training batches while fine-tuning a compressed model


def _load_mnist1d(options: DataOptions) -> Dataset:
    total = options.train_size + options.test_size
    classes = len(templates())
    if total < classes:
        raise DataTooSmall(f"MNIST-1D makes {classes} classes of equal size: {total} samples in all are too few")
    x_train, y_train, x_test, y_test = generate(
        Mnist1dParams(num_samples=total, train_split=options.train_size / total, seed=options.seed)
    )
    return Dataset(x_train, y_train, x_test, y_test)


def _load_digits(options: DataOptions) -> Dataset:
    from sklearn.datasets import load_digits  # shipped with scikit-learn: no download

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(options.seed).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(len(y) * 0.8)
    return Dataset(x[:cut], y[:cut], x[cut:], y[cut:])


TASKS: dict[str, Task] = {
    "mnist1d": Task(
        name="mnist1d",
        description="MNIST-1D (Greydanus 2020): 1-D signals of length 40, 10 classes, generated",
        load=_load_mnist1d,
        models={
            "cloud": ArchConfig("conv1d", (40,), channels=(32, 64, 64), kernels=(5, 3, 3), strides=(1, 2, 2)),
            "edge": ArchConfig("conv1d", (40,), channels=(16, 16), kernels=(5, 3), strides=(2, 2)),
        },
        epochs={"cloud": 30, "edge": 30},
    ),
    "digits": Task(
        name="digits",
        description="scikit-learn's 8x8 handwritten digits, 10 classes",
        load=_load_digits,
        models={
            "cloud": ArchConfig("conv2d", (1, 8, 8), channels=(16, 32), kernels=(3, 3), strides=(1, 1),
                                pools=(1, 2), hidden=(64,)),
            "edge": ArchConfig("conv2d", (1, 8, 8), channels=(8,), kernels=(3,), strides=(2,)),
        },
        epochs={"cloud": 40, "edge": 40},
        finetune_epochs=100,  # 1,300 images: 100 epochs take seconds, and a quarter-width model needs them
        augment=shift_images,
    ),
}


def get_task(name: str) -> Task:
    """The zoo's task called ``name``, else the user's task file for it; UnknownTask listing what there is.

    A task file with problems is a ConfigError naming each at file:line (cloud/zoo/user_tasks.py).
    """
    from cloud.zoo.user_tasks import load_user_task, task_file, tasks_dir  # reads YAML: only for a user's task

    if name in TASKS:
        return TASKS[name]
    path = task_file(name)
    if path is None:
        raise UnknownTask(f"unknown task {name!r}; the zoo's tasks: {', '.join(sorted(TASKS))}; a task of your own"
                          f" is declared in {tasks_dir() / (name + '.yaml')} (docs/TASKS.md)")
    return load_user_task(name, path)


def model_name(task: str, role: str) -> str:
    """Store name of a zoo model, e.g. ``mnist1d-edge``."""
    return f"{task}-{role}"
