"""Trained zoo models for benchmarks, made in the run (nothing downloaded, nothing reused from disk)."""

from __future__ import annotations

from agent.model_store import ModelStore
from cloud.zoo.pipeline import train_and_publish
from cloud.zoo.tasks import DataOptions

QUICK_DATA = DataOptions(train_size=400, test_size=200)


def data_options(quick: bool) -> DataOptions:
    return QUICK_DATA if quick else DataOptions()


def train_zoo(store: ModelStore, task: str, quick: bool, roles: tuple[str, ...] = ("cloud", "edge")) -> None:
    """Train the task's models into ``store`` (2 epochs on tiny data in quick mode)."""
    for role in roles:
        result = train_and_publish(store, task, role, epochs=2 if quick else None, data=data_options(quick),
                                   progress=False)
        print(f"  {task}/{role} trained: test accuracy {result.test_accuracy:.2%}")
