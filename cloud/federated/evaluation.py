"""How the cloud judges an aggregate: accuracy on its own held-out data, and the offload it would need.

The devices never send data, so the cloud judges each round's aggregate on data
it holds itself: the zoo task's validation rows (the end of the training set
that no zoo model trains on; releases are chosen on these) and its test rows
(reported). ``offload_needed`` is the closed loop's yardstick: the smallest
share of the least confident test inputs the edge must send to the cloud so the
cascade reaches ``target`` x the cloud's own accuracy. A better edge model needs
a smaller share.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from agent.confidence import softmax
from agent.federated.architectures import ArchConfig, build
from agent.federated.training import load_float_state
from agent.model_store import ModelStore
from agent.session import first_output
from cloud.zoo.tasks import DataOptions, get_task

ISO_ACCURACY = 0.99


@dataclass(frozen=True)
class HeldOut:
    """The cloud's data for one task, with the cloud model's answers to it."""

    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    cloud_test_probs: np.ndarray

    @property
    def cloud_accuracy(self) -> float:
        return float((self.cloud_test_probs.argmax(axis=1) == self.y_test).mean())


@dataclass(frozen=True)
class Judgement:
    validation_accuracy: float
    test_accuracy: float
    offload_needed: float  # share of test inputs offloaded for ISO_ACCURACY x the cloud's accuracy


def held_out(store: ModelStore, task: str, data: DataOptions) -> HeldOut:
    """The task's validation and test rows, and the store's newest cloud model's probabilities on the test rows."""
    full = get_task(task).load(data)
    _, (x_val, y_val) = full.validation_split()
    logits = first_output(store.get(task, f"{task}-cloud").model_path, full.x_test)
    return HeldOut(x_val, y_val, full.x_test, full.y_test, softmax(logits))


def offload_needed(edge_probs: np.ndarray, cloud_probs: np.ndarray, y: np.ndarray, target: float = ISO_ACCURACY
                   ) -> float:
    """The least share of inputs, least confident first, whose offload gets the cascade to ``target`` x cloud."""
    order = np.argsort(edge_probs.max(axis=1))  # least confident first
    edge_right = (edge_probs.argmax(axis=1) == y)[order]
    cloud_right = (cloud_probs.argmax(axis=1) == y)[order]
    goal = target * cloud_right.mean()
    # offloading the first k: cloud answers those, the edge the rest
    correct = np.concatenate([[0], np.cumsum(cloud_right)]) + np.concatenate([np.cumsum(edge_right[::-1])[::-1], [0]])
    reached = np.flatnonzero(correct / len(y) >= goal)
    return float(reached[0] / len(y)) if len(reached) else 1.0


def beats(new_right: np.ndarray, old_right: np.ndarray, z: float = 1.645) -> tuple[bool, int, int]:
    """Whether a new model is right on more rows than chance explains: McNemar's test, one-sided, 5 %.

    Only the rows the two disagree on count: ``gained`` only the new one gets right, ``lost`` only the
    old one. On a few hundred rows one row is half a point, so "any higher accuracy" would publish
    the noise of re-quantizing unchanged weights. Returns (better, gained, lost).
    """
    gained, lost = int((new_right & ~old_right).sum()), int((~new_right & old_right).sum())
    return gained - lost > z * math.sqrt(gained + lost), gained, lost


def edge_model(arch: str | dict[str, object], arrays: dict[str, np.ndarray]) -> torch.nn.Module:
    """The edge architecture holding ``arrays``, in eval mode."""
    model = build(ArchConfig.from_dict(json.loads(arch) if isinstance(arch, str) else dict(arch)))
    load_float_state(model, arrays)
    return model.eval()


@torch.no_grad()
def judge(model: torch.nn.Module, data: HeldOut) -> Judgement:
    """Validation and test accuracy of an edge model, and the offload it needs at iso-accuracy."""
    val = model(torch.from_numpy(data.x_val)).numpy()
    test_probs = softmax(model(torch.from_numpy(data.x_test)).numpy())
    return Judgement(float((val.argmax(axis=1) == data.y_val).mean()),
                     float((test_probs.argmax(axis=1) == data.y_test).mean()),
                     offload_needed(test_probs, data.cloud_test_probs, data.y_test))
