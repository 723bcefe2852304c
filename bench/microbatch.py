"""Micro-batching: throughput of 32 concurrent callers with dynamic batching on against off.

The same agent, the same model, in the same run; only ``max_batch_size``
differs (32 with a 2 ms window, or 1): the speedup of batching on over off, on
the MNIST-1D cloud CNN served locally. A record, with no goal: serving_peers
states the batching goals against Triton's dynamic batcher and bare
``session.run``, which say more than this in-process ratio on a small model.
``model_per_row_gain_at_32`` records, in the same run, how much cheaper a row
is in a batch of 32 for the bare model (about 2x for this small CNN on one
thread): what batching wins beyond that comes from sharing the per-request
work, and with batching off the agent runs a lone caller's request inline on
the caller's thread, which is fast too.

The same is measured on the zoo's edge model, the one the shipped profiles
serve (``edge_*``): its rows are ~8x cheaper in a batch of 32, so there the
model leaves room, and what the speedup still lacks is the cost every batched
request pays outside the model (a caller thread woken per request).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.model_store import ModelStore
from agent.protocol import InferRequest
from agent.session import open_session
from bench.agent_rig import calls_per_second, running_agent
from bench.results_file import bench_arguments, write_result
from bench.zoo_models import train_zoo

CALLERS = 32  # the default local queue bound (a local-only task has max_queue_depth 32): none is refused


def throughput(store: ModelStore, state: Path, batch: int, seconds: float, model: str = "mnist1d-cloud") -> float:
    """Answered requests per second with ``CALLERS`` threads calling ``agent.infer`` in a loop."""
    x = np.random.default_rng(0).standard_normal((CALLERS, 40)).astype(np.float32)
    with running_agent(store.root, state, model=model,
                       batching={"max_batch_size": batch, "max_queue_delay_ms": 2 if batch > 1 else 0}) as agent:
        return calls_per_second(lambda k: agent.infer(InferRequest("mnist1d", {"input": x[k:k + 1]})), CALLERS, seconds)


def model_batch_gain(store: ModelStore, batch: int, seconds: float, model: str = "mnist1d-cloud") -> float:
    """The model's own ceiling: per-row time of bare ``session.run`` at batch 1 over that at ``batch``.

    Batching can only amortise what the model amortises (plus the per-request Python it saves);
    a model whose rows cost nearly the same alone or stacked leaves little for the batcher to win.
    """
    session = open_session(store.get("mnist1d", model).model_path, intra_op_threads=1)
    alone = _rows_per_second(session, 1, seconds)
    return _rows_per_second(session, batch, seconds) / alone


def _rows_per_second(session: ort.InferenceSession, rows: int, seconds: float) -> float:
    """Rows per second of bare ``session.run`` on batches of ``rows`` from one thread."""
    feed = {"input": np.zeros((rows, 40), np.float32)}
    return calls_per_second(lambda _k: session.run(None, feed), 1, seconds) * rows


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("microbatch", __doc__, argv)
    seconds = 0.5 if args.quick else 5.0
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "store")
        train_zoo(store, "mnist1d", quick=True, roles=("cloud", "edge"))
        metrics = {}
        for prefix, model in (("", "mnist1d-cloud"), ("edge_", "mnist1d-edge")):
            off = throughput(store, Path(tmp) / f"{model}-off", 1, seconds, model)
            on = throughput(store, Path(tmp) / f"{model}-on", 32, seconds, model)
            metrics.update({f"{prefix}batching_off_per_s": round(off, 1), f"{prefix}batching_on_per_s": round(on, 1),
                            f"{prefix}speedup": round(on / off, 3),
                            f"{prefix}model_per_row_gain_at_32": round(model_batch_gain(store, 32, seconds, model), 3)})
    path = write_result("microbatch", {"callers": CALLERS, "seconds": seconds, "model": "mnist1d-cloud",
                                       "edge_model": "mnist1d-edge",
                                       "max_batch_size_on": 32, "max_queue_delay_ms_on": 2},
                        metrics, {}, results_dir=args.results_dir)
    print(f"microbatch: {metrics}\nmicrobatch: wrote {path}")
    return path


if __name__ == "__main__":
    main()
