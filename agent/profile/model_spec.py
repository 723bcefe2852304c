"""Models section: which ONNX model serves each task, its input and its batching.

The input spec is checked against the model when it loads, so a wrong export
fails at start-up with a clear message, not at the first request.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from agent.config.base import (
    STORE_NAME_PATTERN,
    FilePath,
    StrictModel,
    rule_broken,
)

Dtype = Literal["float32", "float16", "int8", "uint8", "int32", "int64"]


class InputSpec(StrictModel):
    """The model's input tensor, checked against every request before it is queued."""

    name: str = Field("input", min_length=1, max_length=128, description="ONNX input name.")
    shape: list[int | None] = Field(
        min_length=1,
        max_length=8,
        description="Input shape; -1 or null marks a dynamic dimension. The first dimension"
        " is the batch, e.g. [-1, 40].",
    )
    dtype: Dtype = Field("float32", description="Element type requests must carry.")

    @field_validator("shape")
    @classmethod
    def check_dimensions(cls, shape: list[int | None]) -> list[int | None]:
        """Dimensions are positive sizes or dynamic (-1 / null); nothing else means anything."""
        for index, dim in enumerate(shape):
            if dim is not None and dim != -1 and dim < 1:
                raise ValueError(
                    f"dimension {index} is {dim}: use a positive size, or -1 (or null)"
                    " for a dynamic one"
                )
        return shape

    @property
    def batch_dim(self) -> int | None:
        """The fixed batch size, or None when the batch dimension is dynamic."""
        first = self.shape[0]
        return None if first is None or first == -1 else first


class BatchingConfig(StrictModel):
    """Dynamic micro-batching: concurrent requests for one task share a model run."""

    max_batch_size: int = Field(
        8, ge=1, le=1024, description="Most requests run together; 1 turns batching off."
    )
    max_queue_delay_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="How long the first queued request waits for others to join its batch;"
        " 0 runs at once with whatever is queued.",
    )


class ModelSpec(StrictModel):
    """One task's local model: from the model store (`name`) or a file (`path`)."""

    name: Annotated[str, StringConstraints(pattern=STORE_NAME_PATTERN)] | None = Field(
        None,
        description="Model name in the model store, e.g. mnist1d-edge; the agent follows"
        " its signed releases. Set this or `path`.",
    )
    path: FilePath | None = Field(
        None,
        description="A local .onnx file, relative to the profile's directory; no updates."
        " Set this or `name`.",
    )
    version: int | None = Field(
        None,
        ge=1,
        description="Pin a store release (store versions are integers that only grow), e.g."
        " 3; null follows the newest signed release.",
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32",
        description="The precision this device should run: int8 for CPUs (Raspberry Pi, x86),"
        " fp16 for GPUs (Jetson), fp32 when accuracy matters more than speed. The cloud decides"
        " what a release is (fedge-cloud compress); the agent warns when one differs.",
    )
    input: InputSpec = Field(description="The model's (first) input tensor. A model with several inputs takes the"
                             " others as its graph declares them; requests send each by name.")
    output_kind: Literal["logits", "probabilities", "other"] | None = Field(
        None,
        description="For a `path` model: what its first output holds. logits (the default):"
        " the agent applies softmax; probabilities (the graph ends in a Softmax): used as they"
        " are; other (boxes, embeddings, regression): no class scores, so no offload policy. A"
        " store model's manifest says this itself.",
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="Dynamic micro-batching."
    )
    max_concurrent_requests: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="HTTP requests for this model worked on at once (decoded, queued, run, waiting for"
        " the cloud); more callers wait their turn, in order (null: no limit). A bound on the memory"
        " large bodies hold at once, not a speed setting: MobileNetV2 at 3x96x96 on 2 cores, 32"
        " callers, serves as fast with a limit of 4 as without.",
    )

    @model_validator(mode="after")
    def check_source(self) -> ModelSpec:
        """Exactly one source, and a version pin only where there are versions."""
        if self.name is None and self.path is None:
            raise rule_broken(
                "no model given: set name (a model from the store) or path (a local .onnx file)"
            )
        if self.name is not None and self.path is not None:
            raise rule_broken(
                "both name and path are set: keep name (from the store) or path (a local file)",
                "path",
            )
        if self.name is not None and self.output_kind is not None:
            raise rule_broken(
                "output_kind describes a local file; a store model's manifest says what it outputs:"
                " remove output_kind or use path",
                "output_kind",
            )
        if self.path is not None and self.version is not None:
            raise rule_broken(
                "version pins a model-store release, so it needs name, not path:"
                " remove version or use name",
                "version",
            )
        return self

    @model_validator(mode="after")
    def check_batch_fits(self) -> ModelSpec:
        """A fixed batch dimension caps how many requests one run can take."""
        fixed = self.input.batch_dim
        if fixed is not None and self.batching.max_batch_size > fixed:
            raise rule_broken(
                f"input.shape[0] fixes the batch at {fixed} but batching.max_batch_size is"
                f" {self.batching.max_batch_size}: make the batch dimension dynamic (-1) or"
                f" set max_batch_size to at most {fixed}",
                "batching",
                "max_batch_size",
            )
        return self
