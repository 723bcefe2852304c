"""Local inference: the agent's whole local path against a bare ``InferenceSession.run``, batch 1.

Both run the same ONNX file with the same session options, one request at a
time, in the same run. The agent path adds input checks, the queue hand-off,
calibrated softmax, the confidence policy and the answer record; the goal is
that this costs at most 15 % of throughput (ratio >= 0.85). Under concurrent
load (8 callers) the ratio is reported too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from agent.model_store import ModelStore
from agent.protocol import InferRequest
from agent.session import open_session
from bench.agent_rig import calls_per_second, running_agent
from bench.results_file import Goal, bench_arguments, write_result
from bench.zoo_models import train_zoo


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("local_infer", __doc__, argv)
    seconds = 0.5 if args.quick else 5.0
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "store")
        train_zoo(store, "mnist1d", quick=True, roles=("edge",))
        x = np.random.default_rng(0).standard_normal((256, 40)).astype(np.float32)
        session = open_session(store.get("mnist1d", "mnist1d-edge").model_path, intra_op_threads=1)
        rows = [x[i:i + 1] for i in range(len(x))]

        def bare(k: int) -> object:
            return session.run(None, {"input": rows[k]})

        with running_agent(store.root, Path(tmp) / "state", batching={"max_batch_size": 8, "max_queue_delay_ms": 1},
                           ) as agent:

            def via_agent(k: int) -> object:
                return agent.infer(InferRequest("mnist1d", {"input": rows[k]}))

            metrics = {
                "bare_per_s": round(calls_per_second(bare, 1, seconds), 1),
                "agent_per_s": round(calls_per_second(via_agent, 1, seconds), 1),
                "bare_8_callers_per_s": round(calls_per_second(bare, 8, seconds), 1),
                "agent_8_callers_per_s": round(calls_per_second(via_agent, 8, seconds), 1),
            }
    metrics["ratio_batch1"] = round(metrics["agent_per_s"] / metrics["bare_per_s"], 3)
    metrics["ratio_8_callers"] = round(metrics["agent_8_callers_per_s"] / metrics["bare_8_callers_per_s"], 3)
    metrics["agent_overhead_us"] = round(1e6 / metrics["agent_per_s"] - 1e6 / metrics["bare_per_s"], 1)
    goals = {"ratio_batch1": Goal(metrics["ratio_batch1"], ">=", 0.85)}
    path = write_result("local_infer", {"seconds": seconds, "model": "mnist1d-edge", "intra_op_threads": 1},
                        metrics, goals, results_dir=args.results_dir)
    print(f"local_infer: {metrics}\nlocal_infer: wrote {path}")
    return path


if __name__ == "__main__":
    main()
