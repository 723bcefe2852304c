"""Local inference: the agent's whole local path against a bare ``InferenceSession.run``, batch 1.

Both run the same ONNX file with the same session options (one intra-op thread), one request at a
time, in the same run. The agent path adds input checks, the softmax, the confidence policy and the
answer record: a fixed cost per call, larger after a big model (it has evicted the caches the
interpreter and numpy work from) than after a small one.

* ``mobilenet``: a MobileNetV2 at 3x96x96 with random weights (bench/mobilenet.py), brought in as a
  user brings their own model (``fedge-cloud models import``'s code). Goal
  ``ratio_batch1_mobilenet`` >= 0.95: on a model with a realistic cost the agent costs at most 5 %.
  The paths take turns in short blocks (``interleaved_call_us``): 3-second rounds drifted ±10 % here,
  more than the goal's margin; a second bare session run the same way shows the spread that is left.
* ``edge``: the zoo's MNIST-1D edge model, a 10 µs model, where any request path is most of the
  time; its added µs per call is recorded (``edge_agent_overhead_us``), with no goal. Under
  concurrent load (8 callers) its ratio is recorded too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.confidence import softmax
from agent.model_store import ModelStore
from agent.protocol import InferRequest
from agent.session import open_session
from bench import mobilenet
from bench.agent_rig import calls_per_second, interleaved_call_us, running_agent
from bench.results_file import Goal, bench_arguments, write_result
from bench.zoo_models import train_zoo
from cloud.imports.importing import import_model
from cloud.registry import open_registry

BATCHING = {"max_batch_size": 8, "max_queue_delay_ms": 1}
MOBILENET_BLOCK = 25  # calls per turn: ~45 ms, short against the machine's drift, long for one path's steady state


def _rates(bare: Callable[[int], object], agent: Callable[[int], object], callers: int, seconds: float,
           rounds: int) -> tuple[float, float]:
    """Median calls per second of each path over interleaved rounds (the machine's noise hits both alike)."""
    pairs = [(calls_per_second(bare, callers, seconds), calls_per_second(agent, callers, seconds))
             for _ in range(rounds)]
    return float(np.median([p[0] for p in pairs])), float(np.median([p[1] for p in pairs]))


def _edge(store: ModelStore, state: Path, seconds: float, rounds: int) -> dict[str, float]:
    train_zoo(store, "mnist1d", quick=True, roles=("edge",))
    x = np.random.default_rng(0).standard_normal((256, 40)).astype(np.float32)
    session = open_session(store.get("mnist1d", "mnist1d-edge").model_path, intra_op_threads=1)
    rows = [x[i:i + 1] for i in range(len(x))]
    with running_agent(store.root, state, batching=BATCHING) as agent:
        def bare(k: int) -> object:
            return session.run(None, {"input": rows[k]})

        def via_agent(k: int) -> object:
            return agent.infer(InferRequest("mnist1d", {"input": rows[k]}))

        bare_1, agent_1 = _rates(bare, via_agent, 1, seconds, rounds)
        bare_8, agent_8 = _rates(bare, via_agent, 8, seconds, rounds)
    return {"edge_bare_per_s": round(bare_1, 1), "edge_agent_per_s": round(agent_1, 1),
            "edge_bare_8_callers_per_s": round(bare_8, 1), "edge_agent_8_callers_per_s": round(agent_8, 1),
            "edge_ratio_batch1": round(agent_1 / bare_1, 3), "edge_ratio_8_callers": round(agent_8 / bare_8, 3),
            "edge_agent_overhead_us": round(1e6 / agent_1 - 1e6 / bare_1, 1)}


def mobilenet_rates(store: ModelStore, work: Path, resolution: int, blocks: int) -> dict[str, float]:
    """MobileNetV2 imported as a user imports it; the agent and bare session.run on it, batch 1, in turns.

    Two more paths say what the ratio is made of: a second bare session (the measurement's own spread:
    its ratio to the first is 1 within the noise) and bare session.run plus the agent's softmax (the
    calibrated probabilities an answer carries and bare logits do not: 1,000 classes here).
    """
    with open_registry(str(work / "registry.db")) as registry:
        stored, _ = import_model(store, registry, "mobilenet", "mobilenet-edge", mobilenet.exported(resolution))
    x = np.random.default_rng(0).standard_normal((16, 3, resolution, resolution)).astype(np.float32)
    rows = [x[i:i + 1] for i in range(len(x))]
    session, again = (open_session(stored.model_path, intra_op_threads=1) for _ in range(2))
    name = session.get_inputs()[0].name
    with running_agent(store.root, work / "mobilenet-state", batching=BATCHING, task="mobilenet",
                       model="mobilenet-edge", input_shape=(-1, 3, resolution, resolution)) as agent:
        us = interleaved_call_us({
            "bare": lambda k: session.run(None, {name: rows[k % len(rows)]}),
            "agent": lambda k: agent.infer(InferRequest("mobilenet", {name: rows[k % len(rows)]})),
            "bare_again": lambda k: again.run(None, {name: rows[k % len(rows)]}),
            "bare_softmax": lambda k: softmax(session.run(None, {name: rows[k % len(rows)]})[0]),
        }, blocks, MOBILENET_BLOCK)
    return {"mobilenet_bare_per_s": round(1e6 / us["bare"], 1), "mobilenet_agent_per_s": round(1e6 / us["agent"], 1),
            "ratio_batch1_mobilenet": round(us["bare"] / us["agent"], 3),
            "mobilenet_agent_overhead_us": round(us["agent"] - us["bare"], 1),
            "mobilenet_softmax_us": round(us["bare_softmax"] - us["bare"], 1),
            "mobilenet_bare_vs_bare_again": round(us["bare"] / us["bare_again"], 3)}


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("local_infer", __doc__, argv)
    seconds, rounds, blocks = (0.3, 1, 4) if args.quick else (3.0, 3, 200)
    resolution = 32 if args.quick else mobilenet.RESOLUTION  # quick: the same graph, a fraction of the export
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = ModelStore(work / "store")
        metrics = {**mobilenet_rates(store, work, resolution, blocks),
                   **_edge(store, work / "state", seconds, rounds)}
    goals = {"ratio_batch1_mobilenet": Goal(metrics["ratio_batch1_mobilenet"], ">=", 0.95)}
    path = write_result("local_infer", {"seconds": seconds, "rounds": rounds, "mobilenet_blocks": blocks,
                                        "mobilenet_block_calls": MOBILENET_BLOCK, "intra_op_threads": 1,
                                        "models": {"mobilenet": f"MobileNetV2 3x{resolution}x{resolution}, imported",
                                                   "edge": "mnist1d-edge"}},
                        metrics, goals, results_dir=args.results_dir)
    print(f"local_infer: {metrics}\nlocal_infer: wrote {path}")
    return path


if __name__ == "__main__":
    main()
