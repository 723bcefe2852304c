"""What a compressed variant costs and how well it does: size, parameters, FLOPs, accuracy, latency.

Latency is measured with ``agent.session.open_session``, the session the agent
will run, and reported as the median of repeated runs after a warm-up.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, shape_inference

from agent.session import first_output, open_session


@dataclass(frozen=True)
class Measurement:
    size_bytes: int
    parameters: int
    nonzero_parameters: int
    flops: int
    accuracy: float  # on the test set: reported, never used to choose
    validation_accuracy: float  # on the held-out validation set: what the search chooses by
    latency_b1_ms: float
    latency_b32_ms: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def parameter_counts(path: Path) -> tuple[int, int]:
    """Total and non-zero weight elements (int8 and float alike; bias/zero-point scalars included)."""
    total = nonzero = 0
    for init in onnx.load(str(path)).graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype.kind in "fiu" and values.ndim >= 1:
            total += values.size
            nonzero += int(np.count_nonzero(values))
    return total, nonzero


def _constant_folded(path: Path, workdir: Path) -> onnx.ModelProto:
    """The graph after ORT's basic optimisations, so shapes computed at run time become constants."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(workdir / "folded.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(workdir / "folded.onnx"))


def flops(path: Path, batch: int = 1) -> int:
    """Multiply-accumulates x2 of Conv, Gemm and MatMul nodes for one batch, from inferred shapes."""
    with tempfile.TemporaryDirectory() as tmp:
        model = _constant_folded(path, Path(tmp))
    inferred = shape_inference.infer_shapes(model, data_prop=True).graph
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.value_info, *inferred.input, *inferred.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
    weights = {i.name: list(i.dims) for i in inferred.initializer}
    total = 0
    for node in inferred.node:
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            weight = weights.get(node.input[3 if node.op_type == "QLinearConv" else 1]) or shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if weight and out:
                total += 2 * int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            a = shapes.get(node.input[0])
            out = shapes.get(node.output[0])
            if a and out:
                total += 2 * int(np.prod(out)) * a[-1]
    return total


def latency_ms(path: Path, x: np.ndarray, *, repeats: int = 200, threads: int = 1) -> float:
    """Median wall time of one ``session.run`` on ``x`` (after warm-up), in milliseconds."""
    session = open_session(path, intra_op_threads=threads)
    name = session.get_inputs()[0].name
    for _ in range(20):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return float((first_output(path, x).argmax(axis=1) == y).mean())


def measure(path: Path, test: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray], *,
            repeats: int = 200) -> Measurement:
    """All numbers for one ONNX file; latency on the first test samples."""
    total, nonzero = parameter_counts(path)
    x_test, y_test = test
    return Measurement(
        size_bytes=path.stat().st_size,
        parameters=total,
        nonzero_parameters=nonzero,
        flops=flops(path),
        accuracy=accuracy(path, x_test, y_test),
        validation_accuracy=accuracy(path, *validation),
        latency_b1_ms=latency_ms(path, x_test[:1], repeats=repeats),
        latency_b32_ms=latency_ms(path, x_test[:32], repeats=repeats),
    )
