"""The compression recipe: a YAML grid of what to try, validated strictly.

Unknown keys and bad values are errors naming the key, so a typo never
silently drops part of the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from agent.config.loader import load_model
from agent.config.yaml_source import DocumentKind
from cloud.zoo.tasks import VALIDATION_FRACTION


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distillation(_Strict):
    """Fine-tune with the cloud model's soft labels (the teacher is the task's cloud model)."""

    temperature: float = Field(4.0, gt=0, description="Softmax temperature of teacher and student")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the distillation term vs hard labels")


class Structured(_Strict):
    norm: Literal["l1", "l2"] = "l1"
    keep_ratios: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [1.0, 0.75, 0.5, 0.25], min_length=1, description="Fraction of channels kept, e.g. [1.0, 0.75, 0.5, 0.25]"
    )


class Unstructured(_Strict):
    scope: Literal["layer", "global"] = "global"
    sparsities: list[Annotated[float, Field(ge=0, lt=1)]] = Field([0.5], description="Fraction of weights zeroed, e.g. [0.5]")


class Pruning(_Strict):
    structured: Structured = Field(default_factory=Structured)
    unstructured: Unstructured = Field(default_factory=Unstructured)
    finetune_epochs: int | None = Field(None, ge=0, le=500, description="Fine-tuning epochs (default: the task's)")


class Quantization(_Strict):
    modes: list[Literal["fp32", "fp16", "dynamic", "static"]] = Field(["fp32", "fp16", "dynamic", "static"], min_length=1)
    calibration: list[Literal["minmax", "entropy", "percentile"]] = Field(["minmax", "entropy", "percentile"], min_length=1)
    per_channel: list[bool] = Field([False, True], min_length=1)
    calibration_samples: int = Field(256, ge=1, le=100_000)


class Recipe(_Strict):
    """What `fedge-cloud compress` tries: every pruning variant times every quantization variant."""

    base: Literal["cloud", "edge"] | None = Field(
        None, description="Which model to compress: default cloud for the zoo's tasks, the edge student for a task"
        " of your own (your cloud model is its teacher)")
    seed: int = 0
    distillation: Distillation | None = Field(default_factory=Distillation)
    pruning: Pruning = Field(default_factory=Pruning)
    quantization: Quantization = Field(default_factory=Quantization)
    latency_repeats: int = Field(200, ge=5, le=10_000)
    validation_split: None = Field(None, exclude=True, description="Removed: recipes from before it went are told why")

    @field_validator("validation_split", mode="before")
    @classmethod
    def _removed(cls, value: object) -> None:
        raise PydanticCustomError(
            "removed_key", f"removed: compress holds out the last {VALIDATION_FRACTION:.0%} of the training set,"
            " which the zoo never trains on; delete this line",
        )


RECIPE = DocumentKind("compression recipe", "pruning, quantization, distillation, ...", None)  # empty: defaults


def load_recipe(path: Path | None) -> Recipe:
    """Read a recipe file (None: the defaults); ConfigError naming each problem at file:line:col."""
    return Recipe() if path is None else load_model(path, Recipe, RECIPE)
