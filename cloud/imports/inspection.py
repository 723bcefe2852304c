"""What a user's ONNX file is, and whether fedge can serve it, decided before anything is written.

The checks a user would otherwise meet one at a time on a device: the ONNX checker, ONNX Runtime
loading it, one run on zeros of its declared shapes, element types fedge carries, a batch axis on
every input. The graph also tells what the first output holds: a final Softmax means probabilities
(a second softmax on the agent would flatten them), a [batch, classes] float output logits, anything
else no class scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from agent.manifest import OutputKind, TensorSpec
from agent.protocol import SUPPORTED_DTYPES
from cloud.onnx_io import io_specs

PROBABILITY_TOLERANCE = 1e-3  # rows of a distribution sum to 1 within this


class ImportRefused(ValueError):
    """The file cannot be served as it is; the message says why and, where there is one, what to do."""


@dataclass(frozen=True)
class Inspected:
    """A checked model: its inputs and outputs as the manifest will list them, and what its first output is."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output_kind: OutputKind
    why: str  # how output_kind was decided, for the user to check
    classes: int | None  # class scores per row of the first output (its last axis on the zero run); None: other


def inspect_model(path: Path, told: OutputKind | None = None) -> Inspected:
    """Check ``path`` and describe it; ImportRefused naming the problem when fedge cannot serve it."""
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    try:
        inputs, outputs = io_specs(path)
    except ValueError as exc:
        raise ImportRefused(str(exc)) from None
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ImportRefused(f"{path}: the ONNX checker refuses it: {str(exc).splitlines()[0]}") from None
    for spec in (*inputs, *outputs):
        if spec.dtype not in SUPPORTED_DTYPES:
            raise ImportRefused(f"{path}: tensor {spec.name!r} has element type {spec.dtype}, which fedge does not"
                                f" carry (supported: {', '.join(SUPPORTED_DTYPES)})")
    for spec in inputs:
        if len(spec.shape) < 2:
            raise ImportRefused(f"{path}: input {spec.name!r} has shape {_shown(spec.shape)}, no batch axis: export"
                                " it with one (torch.onnx.export(..., dynamic_axes={name: {0: 'batch'}}))")
    first = _zero_run(path, inputs)
    kind, why = _output_kind(path, outputs[0], told)
    if kind == "probabilities" and not _is_distribution(first):
        raise ImportRefused(f"{path}: its first output is taken for probabilities ({why}), but on zero inputs its"
                            f" rows do not sum to 1 ({np.asarray(first).reshape(len(first), -1).sum(-1)[:4]}):"
                            " say --outputs logits or --outputs other")
    return Inspected(inputs, outputs, kind, why, None if kind == "other" else int(first.shape[-1]))


def _shown(shape: list[int | None]) -> str:
    return "[" + ", ".join("batch" if d is None else str(d) for d in shape) + "]"


def _zero_run(path: Path, inputs: list[TensorSpec]) -> np.ndarray:
    """The first output of one run on zeros of every input's declared shape (dynamic axes of size 1)."""
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  # ONNX Runtime raises its own exception types, all meaning "cannot load"
        raise ImportRefused(f"{path}: ONNX Runtime cannot load it: {_first_line(exc)}") from None
    feed = {spec.name: np.zeros([d or 1 for d in spec.shape], dtype=spec.dtype) for spec in inputs}
    try:
        return np.asarray(session.run(None, feed)[0])
    except Exception as exc:  # noqa: BLE001
        raise ImportRefused(f"{path}: one run on zero inputs of its declared shapes failed: {_first_line(exc)}"
                            ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _output_kind(path: Path, output: TensorSpec, told: OutputKind | None) -> tuple[OutputKind, str]:
    """What the first output holds: as the user says, else from the node that makes it."""
    if told is not None:
        return told, "as --outputs says"
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = next((n for n in graph.node if output.name in n.output), None)
    if producer is not None and producer.op_type == "Softmax":
        return "probabilities", f"output {output.name!r} comes from a Softmax"
    if output.dtype.startswith("float") and len(output.shape) == 2:
        return "logits", f"output {output.name!r} is [batch, {output.shape[1] or 'classes'}] floats, no final Softmax"
    return "other", f"output {output.name!r} has shape {_shown(output.shape)}: no class scores"


def _is_distribution(first: np.ndarray) -> bool:
    rows = first.reshape(len(first), -1).astype(np.float64)
    return bool(np.all(rows >= -PROBABILITY_TOLERANCE) and np.allclose(rows.sum(-1), 1.0, atol=PROBABILITY_TOLERANCE))
