"""What an ONNX file declares: its inputs and outputs, as a manifest lists them (no torch needed to read them)."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # what onnx.load raises

from agent.manifest import TensorSpec

_ELEM_TO_NUMPY: dict[int, str] = {  # keys: onnx.TensorProto.DataType, an int
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
}


def io_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of an ONNX file, for its manifest (dynamic dims as None).

    ValueError naming the file when it is not an ONNX model (a user may hand any file to ``models publish``).
    """
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except DecodeError:
        raise ValueError(f"{path}: not an ONNX model (cannot be decoded)") from None
    if not graph.input or not graph.output:
        raise ValueError(f"{path}: not an ONNX model (no graph inputs or outputs)")
    initializers = {i.name for i in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        return TensorSpec(name=value.name, dtype=_ELEM_TO_NUMPY.get(tensor.elem_type, str(tensor.elem_type)), shape=dims)

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]
