"""A user's own task, declared in YAML: its data, and the edge student fedge distils from the user's cloud model.

A task file is ``<tasks dir>/<name>.yaml`` (``./tasks`` unless ``FEDGE_TASKS`` names another folder),
so every ``--task`` option finds the user's tasks as it finds the zoo's. The cloud model is whatever
the store serves as ``<name>-cloud`` (``fedge-cloud models import --task <name> --onnx FILE``, or
trained from the user's torch code: ``cloud.factory``); the edge model is a conv student of the zoo's
families, scaled to the input unless the file gives one or names the user's own (``edge.factory``),
trained by ``fedge-cloud train --task <name> --model edge`` on the task's data with the cloud model
as its teacher, then compressed, released and fine-tuned by the fleet like the zoo's. docs/TASKS.md
shows a file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StringConstraints, model_validator

from agent.config.base import FileConfig, FilePath, StrictModel, rule_broken
from agent.config.loader import load_model
from agent.config.problems import error_at
from agent.config.yaml_source import DocumentKind
from agent.federated.architectures import ArchConfig
from agent.manifest import PATH_SEGMENT
from cloud.zoo.tasks import DataOptions, Dataset, Task

TASKS_ENV = "FEDGE_TASKS"
TASK_FILE = DocumentKind("task file", "data, input, edge, epochs", "a task needs at least its data")
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


class DataSection(StrictModel):
    """Where the labelled data is: an .npz of arrays, or a folder of class-named subfolders of .npy files."""

    npz: FilePath | None = Field(None, description="An .npz with x_train, y_train, x_test, y_test and optionally"
                                 " x_val, y_val (else the last 10 % of the training rows are held out).")
    folder: FilePath | None = Field(None, description="A folder with one subfolder per class (its name is the"
                                    " class's, sorted order gives the indices), one sample per .npy file.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="For a folder: the share of each class kept for"
                                 " testing (a seeded draw).")
    seed: int = Field(0, description="For a folder: the seed of the train/test draw.")

    @model_validator(mode="after")
    def one_source(self) -> DataSection:
        """Exactly one of npz and folder."""
        if (self.npz is None) == (self.folder is None):
            raise rule_broken("give the data as npz (a file) or folder (class subfolders), exactly one")
        return self


Size = Annotated[int, Field(ge=1, le=1_000_000)]


class InputSection(StrictModel):
    """One sample's shape, without the batch axis: requests and the data must have it."""

    shape: list[Size] = Field(min_length=1, max_length=3, description="e.g. [40] for a signal, [3, 64, 64] for an"
                             " image")


Factory = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]


class CloudSection(StrictModel):
    """A cloud model fedge trains from your code; without this section it is the ONNX file you import."""

    factory: Factory = Field(description="package.module:function, called as function(input_shape, classes), giving"
                             " a torch nn.Module that outputs logits; `fedge-cloud train --model cloud` trains it.")


class EdgeSection(StrictModel):
    """The edge student: the zoo's conv-then-dense family (agent/federated/architectures.py), or your factory."""

    factory: Factory | None = Field(None, description="package.module:function giving your own student (called as"
                                    " function(input_shape, classes)); devices that fine-tune it must import it too."
                                    " Compress prunes it unstructured only.")
    kind: Literal["conv1d", "conv2d"] | None = None
    channels: list[Size] = Field(default_factory=list, max_length=8)
    kernels: list[Size] = Field(default_factory=list, max_length=8)
    strides: list[Size] = Field(default_factory=list, max_length=8)
    hidden: list[Size] = Field(default_factory=list, max_length=4)

    @model_validator(mode="after")
    def one_per_block(self) -> EdgeSection:
        """A factory, or a kind with channels, kernels and strides describing the same conv blocks."""
        if (self.factory is None) == (self.kind is None):
            raise rule_broken("give the edge student as factory (your code) or as kind with channels, kernels and"
                              " strides (the zoo's conv family), exactly one")
        if self.factory is not None:
            if self.channels or self.kernels or self.strides or self.hidden:
                raise rule_broken("a factory's student is your code: channels, kernels, strides and hidden describe"
                                  " the zoo's conv family; remove them")
            return self
        if not self.channels or not len(self.channels) == len(self.kernels) == len(self.strides):
            raise rule_broken(f"channels, kernels and strides give one entry per conv block; they have"
                              f" {len(self.channels)}, {len(self.kernels)} and {len(self.strides)}")
        return self


class Epochs(StrictModel):
    """Training lengths: the task's data is the user's, so are the epochs it needs."""

    cloud: int = Field(30, ge=1, le=1000, description="Epochs of training a cloud model from a factory.")
    edge: int = Field(30, ge=1, le=1000, description="Epochs of distillation into the edge student.")
    finetune: int = Field(30, ge=0, le=1000, description="Epochs of fine-tuning each pruned variant in compress.")


class TaskFile(FileConfig):
    """A user task: data, input, classes; optionally the cloud model's code, the edge student and epochs."""

    description: str = Field("", max_length=200)
    data: DataSection
    input: InputSection
    classes: int = Field(ge=2, le=10_000, description="How many classes the labels (0 .. classes-1) name.")
    cloud: CloudSection | None = Field(None, description="Your cloud model as code fedge trains; default: the ONNX file"
                                       " you import as <task>-cloud.")
    edge: EdgeSection | None = Field(None, description="The edge student; default: a small conv net scaled to the"
                                     " input (conv1d for [length] or [channels, length], conv2d for images).")
    epochs: Epochs = Field(default_factory=Epochs)

    @model_validator(mode="after")
    def edge_fits_input(self) -> TaskFile:
        """A conv2d student needs [channels, height, width]; conv1d [length] or [channels, length]."""
        rank = len(self.input.shape)
        if self.edge is not None and self.edge.kind is not None and (self.edge.kind == "conv2d") != (rank == 3):
            raise rule_broken(f"edge.kind {self.edge.kind} does not fit input.shape {self.input.shape}: use conv2d"
                              " for [channels, height, width], conv1d otherwise", "edge", "kind")
        return self


def tasks_dir() -> Path:
    """Where user task files live: ``$FEDGE_TASKS``, else ./tasks."""
    return Path(os.environ.get(TASKS_ENV) or "tasks")


def pin_tasks_dir() -> None:
    """Name the task folder absolutely for this process's children (Flower's ServerApp runs wherever Flower puts it)."""
    os.environ[TASKS_ENV] = str(tasks_dir().resolve())


def task_file(name: str) -> Path | None:
    """The task file declaring ``name``, if there is one (a name that is no single path segment has none)."""
    if not re.fullmatch(PATH_SEGMENT, name):
        return None
    path = tasks_dir() / f"{name}.yaml"
    return path if path.is_file() else None


def edge_arch(declared: TaskFile) -> ArchConfig:
    """The edge student's config: the file's, or the zoo's small conv nets scaled to the input."""
    shape, classes = tuple(declared.input.shape), declared.classes
    e = declared.edge
    if e is not None and e.factory is not None:
        return ArchConfig("factory", shape, (), (), (), classes=classes, factory=e.factory)
    if e is not None and e.kind is not None:
        return ArchConfig(e.kind, shape, tuple(e.channels), tuple(e.kernels), tuple(e.strides),
                          hidden=tuple(e.hidden), classes=classes)
    if len(shape) == 3:
        return ArchConfig("conv2d", shape, (8, 16), (3, 3), (2, 2), classes=classes)
    return ArchConfig("conv1d", shape, (16, 16), (5, 3), (2, 2), classes=classes)


def load_user_task(name: str, path: Path) -> Task:
    """The task declared in ``path``; ConfigError at file:line for a bad file, and naming the array for bad data."""
    declared = load_model(path, TaskFile, TASK_FILE)

    def load(_: DataOptions) -> Dataset:  # the data is the user's: sizes and seeds of generated data do not apply
        return _dataset(declared, path)

    models = {"edge": edge_arch(declared)}
    if declared.cloud is not None:
        models["cloud"] = ArchConfig("factory", tuple(declared.input.shape), (), (), (), classes=declared.classes,
                                     factory=declared.cloud.factory)
    return Task(name=name, description=declared.description or f"user task from {path}", load=load, models=models,
                epochs={"edge": declared.epochs.edge, "cloud": declared.epochs.cloud},
                finetune_epochs=declared.epochs.finetune)


def _dataset(declared: TaskFile, path: Path) -> Dataset:
    d = declared.data
    source = str(path)
    if d.npz is not None:
        arrays = _npz(declared.resolve_path(d.npz), source)
    else:
        assert d.folder is not None
        arrays = _folder(declared.resolve_path(d.folder), d.test_fraction, d.seed, source)
    checked = {key: _checked(key, value, declared, source) for key, value in arrays.items()}
    for part in ("train", "test", "val"):
        if f"x_{part}" in checked and len(checked[f"x_{part}"]) != len(checked[f"y_{part}"]):
            raise error_at(source, f"data: x_{part} has {len(checked[f'x_{part}'])} rows and y_{part}"
                                   f" {len(checked[f'y_{part}'])}; one label per row")
    validation = (checked["x_val"], checked["y_val"]) if "x_val" in checked else None
    return Dataset(checked["x_train"], checked["y_train"], checked["x_test"], checked["y_test"], validation)


def _npz(file: Path, source: str) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as archive:
            held = set(archive.files)
            wanted = [*ARRAYS, *(("x_val", "y_val") if "x_val" in held or "y_val" in held else ())]
            missing = [key for key in wanted if key not in held]
            if missing:
                raise error_at(source, f"data.npz {file}: no array {missing[0]!r} (it holds {sorted(held)});"
                                       f" a task's .npz holds {', '.join(ARRAYS)} and optionally x_val, y_val")
            return {key: archive[key] for key in wanted}
    except FileNotFoundError:
        raise error_at(source, f"data.npz {file}: no such file") from None
    except (OSError, ValueError) as exc:  # not a zip, a pickled object array, a truncated file
        raise error_at(source, f"data.npz {file}: not a readable .npz ({exc})") from None


def _folder(root: Path, test_fraction: float, seed: int, source: str) -> dict[str, np.ndarray]:
    if not root.is_dir():
        raise error_at(source, f"data.folder {root}: no such folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise error_at(source, f"data.folder {root}: {len(classes)} class subfolder(s); a classifier needs two or more")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ARRAYS}
    for label, folder in enumerate(classes):
        files = sorted(folder.glob("*.npy"))
        if len(files) < 2:
            raise error_at(source, f"data.folder {folder}: {len(files)} .npy file(s); each class needs two or more"
                                   " (one to train on, one to test)")
        try:
            samples = np.stack([np.load(f, allow_pickle=False) for f in files])
        except (OSError, ValueError) as exc:
            raise error_at(source, f"data.folder {folder}: the samples do not load as one array ({exc})") from None
        order = rng.permutation(len(samples))
        cut = max(1, round(len(samples) * test_fraction))
        for key, rows in (("x_test", order[:cut]), ("x_train", order[cut:])):
            parts[key].append(samples[rows])
            parts["y" + key[1:]].append(np.full(len(rows), label, np.int64))
    return {key: np.concatenate(value) for key, value in parts.items()}


def _checked(key: str, value: np.ndarray, declared: TaskFile, source: str) -> np.ndarray:
    """Inputs as float32 of the declared shape, labels as int64 class indices; ConfigError naming the array."""
    if key.startswith("x"):
        want = [len(value), *declared.input.shape]
        if value.dtype.kind not in "biuf" or list(value.shape) != want:
            raise error_at(source, f"data: {key} is {value.dtype} {list(value.shape)}; input.shape says"
                                   f" [rows, {', '.join(map(str, declared.input.shape))}] of numbers")
        x = value.astype(np.float32)
        if not np.isfinite(x).all():
            raise error_at(source, f"data: {key} holds NaN or infinity")
        return x
    if value.ndim != 1 or value.dtype.kind not in "iu" or (len(value) and not 0 <= value.min() <= value.max()
                                                           < declared.classes):
        raise error_at(source, f"data: {key} must be integer labels 0 .. {declared.classes - 1} (classes:"
                               f" {declared.classes}), one per row; it is {value.dtype} {list(value.shape)}")
    return value.astype(np.int64)
