"""Train a task's model and release it into the store: data, training, export, manifest.

A zoo model learns from the labels. A user task's edge student also learns from the task's cloud model
(distillation, cloud/compress/base_models.teacher_of): the user brought that model because it is good.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from agent.federated.architectures import ArchConfig, FactoryError, build, example_input, parameter_count
from agent.model_store import ModelStore, StoredModel
from cloud.compress.base_models import teacher_of
from cloud.compress.distill import DistillSettings
from cloud.export import export_onnx
from cloud.store import publish
from cloud.zoo.tasks import TASKS, DataOptions, get_task, model_name
from cloud.zoo.train import accuracy, logits_of, seed_everything, train_classifier


def check_outputs(model: torch.nn.Module, config: ArchConfig) -> None:
    """A model answers [batch, classes] logits for its input shape; FactoryError saying what a factory's gives."""
    with torch.no_grad():
        try:
            shape = list(model.eval()(example_input(config, 2)).shape)
        except RuntimeError as exc:  # a factory's model that does not take the task's input
            raise FactoryError(f"model factory {config.factory}: fails on an input of shape [2, "
                               f"{', '.join(map(str, config.input_shape))}]: {str(exc).splitlines()[0]}") from None
    if shape != [2, config.classes]:
        raise FactoryError(f"model factory {config.factory}: answers shape {shape} for 2 rows; fedge needs logits of"
                           f" shape [2, {config.classes}] (one score per class)")


@dataclass(frozen=True)
class TrainResult:
    stored: StoredModel
    test_accuracy: float


def train_and_publish(
    store: ModelStore,
    task_name: str,
    role: str,
    *,
    epochs: int | None = None,
    seed: int = 0,
    data: DataOptions = DataOptions(),
    progress: bool = True,
) -> TrainResult:
    """Train the task's ``role`` (cloud or edge) architecture and publish it with its checkpoint."""
    task = get_task(task_name)
    if role not in task.models:
        raise ValueError(f"task {task_name} has no {role!r} architecture to train (its cloud model is the one you"
                         f" import: fedge-cloud models import --task {task_name} --onnx FILE); train"
                         f" {', '.join(task.models)}")
    config: ArchConfig = task.models[role]
    # The held-out end of the training set stays unseen, so compression can choose variants on it honestly.
    dataset, _ = task.load(data).validation_split()
    teacher = teacher_of(store, task_name)[1] if task_name not in TASKS and role == "edge" else None
    distilled = DistillSettings() if teacher is not None else None
    generator = seed_everything(seed)  # before build: initial weights come from the seed too
    model = build(config)
    check_outputs(model, config)
    train_classifier(
        model, dataset.x_train, dataset.y_train, epochs=epochs or task.epochs[role], generator=generator,
        teacher=teacher, alpha=distilled.alpha if distilled else 0.5,
        temperature=distilled.temperature if distilled else 4.0, description=f"{task_name}/{role}", progress=progress,
    )
    test_acc = accuracy(logits_of(model, dataset.x_test), dataset.y_test)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(model, config, Path(tmp) / "model.onnx")
        stored = publish(
            store, task_name, model_name(task_name, role), onnx_file,
            metrics={"test_accuracy": test_acc, "parameters": float(parameter_count(model))},
            recipe={"trained": {"epochs": epochs or task.epochs[role], "seed": seed, "train_rows": len(dataset.y_train),
                                **data.split_record()},
                    **({"distilled": {"alpha": distilled.alpha, "temperature": distilled.temperature}}
                       if distilled else {})},
            checkpoint={"arch": config.as_dict(), "state_dict": model.state_dict()},
        )
    return TrainResult(stored, test_acc)
