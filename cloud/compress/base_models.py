"""The store's models compress starts from: the base with its checkpoint, and the cloud model as the teacher.

A zoo task's cloud model has an fp32 checkpoint fedge trained; a user's imported cloud model is only an
ONNX file, and teaches as one: ONNX Runtime runs it on each batch (no converter, no operator it cannot
take), its logits (or the log of its probabilities) are the soft labels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agent.federated.architectures import ArchConfig, build
from agent.model_store import ModelStore, StoredModel
from agent.session import open_session
from cloud.store import CHECKPOINT_FILE, load_checkpoint
from cloud.zoo.tasks import TASKS, DataOptions, model_name


class NoModelToCompress(LookupError):
    """The store lacks the trained model a recipe starts from; the message says how to train it."""


def trained_model(store: ModelStore, task: str, role: str) -> tuple[StoredModel, nn.Sequential, ArchConfig]:
    name = model_name(task, role)
    if not store.versions(task, name):
        raise NoModelToCompress(
            f"no trained {name} in the store {store.root}; train it first: "
            f"fedge-cloud train --task {task} --model {role} --store {store.root}"
        )
    stored = store.get(task, name)
    checkpoint = load_checkpoint(stored)
    config = ArchConfig.from_dict(checkpoint["arch"])
    model = build(config)
    model.load_state_dict(checkpoint["state_dict"])
    return stored, model.eval(), config


def require_unseen_validation(store: ModelStore, stored: StoredModel, role: str, data: DataOptions) -> None:
    """Refuse a model that may have trained on the rows compress chooses on: the choice would be silently biased.

    The zoo (and compress's own releases) record in ``recipe.trained`` the fraction held out and the data options;
    a store made before the zoo held out anything, or with other data options, has to be retrained.
    """
    m = stored.manifest
    trained = (m.recipe or {}).get("trained") or {}
    expected = data.split_record()
    retrain = f"retrain it: fedge-cloud train --task {m.task} --model {role} --store {store.root}"
    if trained.get("held_out") != expected["held_out"]:
        raise NoModelToCompress(
            f"{m.task}/{m.name} v{m.version} was not trained with the last {expected['held_out']:.0%} of the training"
            f" set held out (recipe.trained.held_out: {trained.get('held_out')}), and compress chooses variants on"
            f" that part; {retrain}"
        )
    if trained.get("data") != expected["data"]:
        raise NoModelToCompress(
            f"{m.task}/{m.name} v{m.version} was trained on other data options ({trained.get('data')}) than compress"
            f" loads ({expected['data']}), so its training rows would overlap the validation rows; {retrain}"
            " (with the default --train-size and --test-size)"
        )


class OnnxTeacher(nn.Module):
    """A frozen ONNX model as a torch teacher: logits for a batch, from ONNX Runtime."""

    def __init__(self, stored: StoredModel) -> None:
        super().__init__()
        self._session = open_session(stored.model_path, intra_op_threads=None)
        self._input = stored.manifest.inputs[0].name
        self._probabilities = stored.manifest.kind == "probabilities"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._session.run(None, {self._input: x.detach().numpy()})[0]
        return torch.from_numpy(np.log(np.clip(out, 1e-12, None)) if self._probabilities else out)


def teacher_of(store: ModelStore, task: str) -> tuple[StoredModel, nn.Module, bool]:
    """The task's cloud model as a teacher, and whether fedge trained it (so the rows it saw are known)."""
    name = model_name(task, "cloud")
    if not store.versions(task, name):
        how = (f"train it: fedge-cloud train --task {task} --model cloud --store {store.root}" if task in TASKS else
               f"import yours: fedge-cloud models import --task {task} --onnx FILE --store {store.root}")
        raise NoModelToCompress(f"no {name} in the store {store.root} to learn from; {how}")
    stored = store.get(task, name)
    if (stored.directory / CHECKPOINT_FILE).is_file():
        stored, model, _ = trained_model(store, task, "cloud")
        return stored, model, True
    if stored.manifest.kind == "other":
        raise NoModelToCompress(f"{task}/{name} v{stored.manifest.version} has no class scores to teach a"
                                " classifier with (imported with --outputs other)")
    if len(stored.manifest.inputs) > 1:
        raise NoModelToCompress(f"{task}/{name} v{stored.manifest.version} takes {len(stored.manifest.inputs)} inputs;"
                                " fedge serves such models but trains students of single-input models only")
    return stored, OnnxTeacher(stored).eval(), False
