"""int8 and fp16 variants of an ONNX model, with ONNX Runtime's own quantization tools.

Dynamic int8 quantizes weights only (activations at run time); static QDQ
int8 calibrates activation ranges on task data first, with MinMax, Entropy
or Percentile. fp16 is for GPU profiles (Jetson); it keeps float32 inputs and
outputs so callers need not change.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

Calibration = Literal["minmax", "entropy", "percentile"]
CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class ArrayReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no types
    """Feeds calibration batches from a numpy array to ORT's calibrator."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int = 32) -> None:
        self._batches: Iterator[np.ndarray] = iter([x[i:i + batch_size] for i in range(0, len(x), batch_size)])
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


def _quiet_ort_quantization() -> None:
    """The quantizer logs a line per tensor at INFO; keep reports readable."""
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    logging.getLogger("root").setLevel(logging.WARNING)


def _preprocessed(source: Path, workdir: Path) -> Path:
    """Shape inference and graph fusions, which ORT recommends before quantizing."""
    target = workdir / "pre.onnx"
    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    return target


def dynamic_int8(source: Path, target: Path, *, per_channel: bool = False) -> Path:
    """int8 weights, activations quantized on the fly."""
    _quiet_ort_quantization()
    with tempfile.TemporaryDirectory() as tmp:
        quantize_dynamic(_preprocessed(source, Path(tmp)), target, weight_type=QuantType.QInt8, per_channel=per_channel)
    return target


def static_int8(
    source: Path,
    target: Path,
    calibration_x: np.ndarray,
    *,
    method: Calibration = "minmax",
    per_channel: bool = False,
    input_name: str = "input",
) -> Path:
    """QDQ int8 weights and activations, ranges calibrated on ``calibration_x``."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    if len(calibration_x) == 0:
        raise ValueError("static quantization needs calibration samples")
    _quiet_ort_quantization()
    # The calibrators print progress to stdout; keep the command's own output readable.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            _preprocessed(source, Path(tmp)),
            target,
            ArrayReader(input_name, calibration_x),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return target


def fp16(source: Path, target: Path) -> Path:
    """float16 weights and compute, float32 inputs and outputs (for GPU execution providers)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


def initializer_types(path: Path) -> set[str]:
    """The element types of a model's weights, e.g. {'INT8', 'FLOAT'}: how a test tells int8 from fp32."""
    graph = onnx.load(str(path)).graph
    return {onnx.TensorProto.DataType.Name(init.data_type) for init in graph.initializer}
