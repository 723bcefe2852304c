"""Triton Inference Server through PyTriton 0.7, serving ONNX files with onnxruntime: the peers' python.

``python triton_server.py --listen-port P --intra-op-threads 1 --delay-us 0 --workspace DIR
--serve NAME=FILE --max-batch NAME=ROWS [--serve ... --max-batch ...]``

Each file is one Triton model with dynamic batching on; its inference callable
(PyTriton's ``@batch``) runs the session on the batch Triton formed. Triton's
Python backend stub links libpython: the caller puts this interpreter's own
library directory first on LD_LIBRARY_PATH. From fedge it imports only
agent.session (onnxruntime alone), so every server opens sessions alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch  # type: ignore[import-not-found]
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # type: ignore[import-not-found]
from pytriton.triton import Triton, TritonConfig  # type: ignore[import-not-found]

from agent.session import open_session  # the repository is on PYTHONPATH (servers.py): fedge's own options


def callable_for(sess: ort.InferenceSession) -> Callable[..., dict[str, np.ndarray]]:
    input_name, output_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    @batch  # type: ignore[untyped-decorator]
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {output_name: sess.run([output_name], {input_name: inputs[input_name]})[0]}

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--max-batch", action="append", default=[], metavar="NAME=ROWS")
    parser.add_argument("--delay-us", type=int, default=0)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--serve", action="append", required=True, metavar="NAME=FILE")
    args = parser.parse_args()
    config = TritonConfig(http_port=args.listen_port, allow_grpc=False, allow_metrics=False, http_address="127.0.0.1")
    sessions: dict[str, ort.InferenceSession] = {}
    max_batch = {name: int(rows) for name, rows in (item.split("=", 1) for item in args.max_batch)}
    with Triton(config=config, workspace=args.workspace) as triton:
        for item in args.serve:
            name, path = item.split("=", 1)
            sess = sessions[name] = open_session(Path(path), intra_op_threads=args.intra_op_threads)
            inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
            row_shape: Any = tuple(d if isinstance(d, int) else -1 for d in inp.shape[1:])
            triton.bind(model_name=name, infer_func=callable_for(sess),
                        inputs=[Tensor(name=inp.name, dtype=np.float32, shape=row_shape)],
                        outputs=[Tensor(name=out.name, dtype=np.float32, shape=(-1,))],
                        config=ModelConfig(max_batch_size=max_batch.get(name, 32),
                                           batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us)),
                        strict=False)
        triton.serve()


if __name__ == "__main__":
    main()
