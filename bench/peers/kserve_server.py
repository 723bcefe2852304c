"""KServe 0.21 ModelServer serving ONNX files with onnxruntime: run with the peers' environment's python.

``python kserve_server.py --listen-port P --intra-op-threads 1 --serve NAME=FILE [--serve ...]``

A custom ``kserve.Model`` per file, the pattern KServe documents for a custom
runtime: ``predict`` (synchronous) runs the session on the decoded OIP v2
request. Per-request logging (latency lines, uvicorn's access log) is off, as
fedge and Triton log nothing per request. From fedge it imports only agent.session (onnxruntime alone).
"""

from __future__ import annotations

import argparse
import logging
import uuid
from pathlib import Path
from typing import Any

import kserve  # type: ignore[import-not-found]
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse

from agent.session import open_session  # the repository is on PYTHONPATH (servers.py): fedge's own options


class OnnxModel(kserve.Model):  # type: ignore[misc]  # kserve has no type information here
    """One ONNX file behind KServe's OIP v2 endpoints."""

    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path, self.threads = path, threads

    def load(self) -> bool:
        self.session = open_session(Path(self.path), intra_op_threads=self.threads)
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]
        self.ready = True
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        """Model metadata's inputs (KServe's default is none, and a client then cannot find the names)."""
        return [{"name": self.input.name, "datatype": "FP32", "shape": [-1 if not isinstance(d, int) else d
                                                                         for d in self.input.shape]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": self.output.name, "datatype": "FP32", "shape": [-1, -1]}]

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                response_headers: dict[str, str] | None = None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        y = self.session.run([self.output.name], {self.input.name: x})[0]
        binary = payload.use_binary_outputs
        out = InferOutput(name=self.output.name, shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=binary)
        # KServe 0.21 answers 500 for a request without an id unless the model gives its response one.
        return InferResponse(response_id=payload.id or uuid.uuid4().hex, model_name=self.name, infer_outputs=[out],
                             use_binary_outputs=binary, requested_outputs=payload.request_outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--serve", action="append", required=True, metavar="NAME=FILE")
    args, _ = parser.parse_known_args()
    models = []
    for item in args.serve:
        name, path = item.split("=", 1)
        model = OnnxModel(name, path, args.intra_op_threads)
        model.load()
        models.append(model)
    server = kserve.ModelServer(http_port=args.listen_port, enable_grpc=False, enable_latency_logging=False,
                                workers=1)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server.start(models)


if __name__ == "__main__":
    main()
