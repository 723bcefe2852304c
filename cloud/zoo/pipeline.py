"""Train a zoo model and release it into the store: data, training, export, manifest."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.federated.architectures import ArchConfig, build, parameter_count
from agent.model_store import ModelStore, StoredModel
from cloud.export import export_onnx
from cloud.store import publish
from cloud.zoo.tasks import DataOptions, get_task, model_name
from cloud.zoo.train import accuracy, logits_of, seed_everything, train_classifier


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
        raise ValueError(f"task {task_name} has no {role!r} model; choose one of {', '.join(task.models)}")
    config: ArchConfig = task.models[role]
    # The held-out end of the training set stays unseen, so compression can choose variants on it honestly.
    dataset, _ = task.load(data).validation_split()
    generator = seed_everything(seed)  # before build: initial weights come from the seed too
    model = build(config)
    train_classifier(
        model, dataset.x_train, dataset.y_train, epochs=epochs or task.epochs[role], generator=generator,
        description=f"{task_name}/{role}", progress=progress,
    )
    test_acc = accuracy(logits_of(model, dataset.x_test), dataset.y_test)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(model, config, Path(tmp) / "model.onnx")
        stored = publish(
            store, task_name, model_name(task_name, role), onnx_file,
            metrics={"test_accuracy": test_acc, "parameters": float(parameter_count(model))},
            recipe={"trained": {"epochs": epochs or task.epochs[role], "seed": seed, "train_rows": len(dataset.y_train),
                                **data.split_record()}},
            checkpoint={"arch": config.as_dict(), "state_dict": model.state_dict()},
        )
    return TrainResult(stored, test_acc)
