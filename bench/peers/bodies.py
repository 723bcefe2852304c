"""Request bodies as Triton's own HTTP client encodes them, for any OIP v2 server.

The output to ask for is read from the server's model metadata (fedge names
its output ``probabilities``, the peers ``logits``), so the same code builds
every server's body. JSON mode sends ``Content-Type: application/json``
(KServe needs it; tritonclient sends none); binary mode sends the
binary tensor extension's header, its inputs and outputs as raw bytes.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.http import (  # type: ignore[import-untyped]
    InferenceServerClient,
    InferInput,
    InferRequestedOutput,
)

MODES = ("json", "binary")


@dataclass(frozen=True)
class Body:
    """One model's request to one server in one mode."""

    file: Path
    headers: dict[str, str]
    output: str


def output_name(port: int, model: str) -> str:
    """The model's first output, from ``GET /v2/models/<model>``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}", timeout=10) as resp:
        meta = json.loads(resp.read())
    outputs = meta.get("outputs") or []
    if not outputs:
        raise ValueError(f"server on port {port}: model {model!r} declares no outputs in its metadata: {meta}")
    return str(outputs[0]["name"])


def build(x: np.ndarray, input_name: str, output: str, mode: str, file: Path) -> Body:
    binary = mode == "binary"
    tensor = InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    body, json_size = InferenceServerClient.generate_request_body(
        [tensor], outputs=[InferRequestedOutput(output, binary_data=binary)])
    file.write_bytes(body)
    if binary:
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)}
    else:
        headers = {"Content-Type": "application/json"}
    return Body(file, headers, output)
