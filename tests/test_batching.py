"""The micro-batcher with a real ONNX Runtime session on a tiny graph."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.batching import BatcherClosed, MicroBatcher, Pending, QueueFull
from agent.feeds import Rows
from agent.session import open_session


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """softmax(x @ W) with a dynamic batch axis."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return open_session(Path(path))


def run_fn(session, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    def run(x: Rows) -> Rows:
        if calls is not None:
            calls.append(len(x[0]))
        return tuple(session.run(None, {"x": x[0]}))
    return run


def occupy(batcher: MicroBatcher, *x: np.ndarray) -> Pending:
    """Submit ``x`` (one array per input) from another caller's thread and wait until the model is busy with it."""
    holder: list[Pending] = []
    threading.Thread(target=lambda: holder.append(batcher.submit(x)), daemon=True).start()
    deadline = time.monotonic() + 5
    while not (batcher.busy and batcher.depth == 0) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert batcher.busy
    return holder  # type: ignore[return-value]  # filled once the inline run returns


def test_concurrent_callers_get_their_own_rows_and_batches_form(session) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    batcher = MicroBatcher(run_fn(session, calls), max_batch_size=16, max_queue_delay_ms=20, max_queue_depth=128)
    x = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
    expected = session.run(None, {"x": x})[0]
    results: list[np.ndarray | None] = [None] * 64
    barrier = threading.Barrier(64)

    def call(i: int) -> None:
        barrier.wait()
        results[i] = batcher.submit((x[i:i + 1],)).result(timeout=10)[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i, row in enumerate(results):
        np.testing.assert_allclose(row, expected[i:i + 1], rtol=1e-5)
    assert sum(calls) == 64 and len(calls) < 64 and max(calls) <= 16


def test_priority_first_and_fifo_within_a_priority(session) -> None:  # type: ignore[no-untyped-def]
    order: list[float] = []
    gate = threading.Event()

    def run(x: Rows) -> Rows:
        gate.wait(5)
        order.extend(x[0][:, 0].tolist())
        return tuple(session.run(None, {"x": x[0]}))

    batcher = MicroBatcher(run, max_batch_size=1, max_queue_delay_ms=0, max_queue_depth=16)
    occupy(batcher, np.full((1, 4), -1, np.float32))  # holds the model until the gate opens
    futures = [batcher.submit((np.full((1, 4), v, np.float32),), priority=p) for v, p in ((1, 1), (2, 9), (3, 1), (4, 9))]
    gate.set()
    for f in futures:
        f.result(timeout=5)
    batcher.close()
    assert order == [-1, 2, 4, 1, 3]


def test_full_queue_refuses_at_once_and_errors_stay_with_their_batch(session) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    fail = {"on": True}

    def run(x: Rows) -> Rows:
        gate.wait(5)
        if fail["on"]:
            fail["on"] = False
            raise RuntimeError("boom")
        return tuple(session.run(None, {"x": x[0]}))

    batcher = MicroBatcher(run, max_batch_size=1, max_queue_delay_ms=0, max_queue_depth=2)
    one = (np.zeros((1, 4), np.float32),)
    running = occupy(batcher, one[0])
    queued = [batcher.submit(one), batcher.submit(one)]
    with pytest.raises(QueueFull):
        batcher.submit(one)
    gate.set()
    deadline = time.monotonic() + 5
    while not running and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(RuntimeError, match="boom"):
        running[0].result(timeout=5)
    assert all(f.result(timeout=5)[0].shape == (1, 3) for f in queued)
    batcher.close()


def test_a_full_queue_sheds_its_newest_lowest_priority_request_for_a_higher_one(session) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()

    def run(x: Rows) -> Rows:
        gate.wait(5)
        return tuple(session.run(None, {"x": x[0]}))

    batcher = MicroBatcher(run, max_batch_size=1, max_queue_delay_ms=0, max_queue_depth=2)
    one = (np.zeros((1, 4), np.float32),)
    occupy(batcher, one[0])
    low_first, low_last = batcher.submit(one, priority=1), batcher.submit(one, priority=1)
    high = batcher.submit(one, priority=9)  # takes the place of the newest of the lowest
    with pytest.raises(QueueFull, match="higher priority"):
        low_last.result(timeout=1)
    with pytest.raises(QueueFull, match="queue is full"):
        batcher.submit(one, priority=1)  # nothing waits at a lower priority than this one
    gate.set()
    assert high.result(timeout=5)[0].shape == (1, 3) and low_first.result(timeout=5)[0].shape == (1, 3)
    batcher.close()


def test_lone_caller_runs_inline(session) -> None:  # type: ignore[no-untyped-def]
    callers: list[str] = []
    batcher = MicroBatcher(lambda x: callers.append(threading.current_thread().name) or run_fn(session)(x),
                           max_batch_size=8, max_queue_delay_ms=50)
    ran = batcher.call((np.zeros((1, 4), np.float32),))
    assert ran.outputs[0].shape == (1, 3) and ran.queue_s == 0.0 and callers == [threading.current_thread().name]
    batcher.close()


def test_close_drains_or_fails_what_is_queued(session) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    batcher = MicroBatcher(lambda x: gate.wait(5) and run_fn(session)(x), max_batch_size=4,
                           max_queue_delay_ms=50, max_queue_depth=16)
    occupy(batcher, np.zeros((1, 4), np.float32))
    futures: list[Pending] = [batcher.submit((np.zeros((1, 4), np.float32),)) for _ in range(6)]
    gate.set()
    batcher.close(drain=True)
    assert all(f.result(timeout=1)[0].shape == (1, 3) for f in futures)
    with pytest.raises(BatcherClosed):
        batcher.submit((np.zeros((1, 4), np.float32),))


def test_a_batch_waits_for_as_many_rows_as_the_last_one_not_for_a_full_batch(session) -> None:  # type: ignore[no-untyped-def]
    """Four steady callers and room for 64 rows: the fifth to eighth requests run when four are in, not after the delay."""
    calls: list[int] = []
    gate = threading.Event()
    run = run_fn(session, calls)

    def gated(x: Rows) -> Rows:
        gate.wait(10)
        return run(x)

    batcher = MicroBatcher(gated, max_batch_size=64, max_queue_delay_ms=60_000)
    one = (np.ones((1, 4), np.float32),)
    try:
        first = batcher.submit(one)  # runs alone and holds the model until the gate opens
        while batcher.load()[0]:
            time.sleep(0.001)
        queued = [batcher.submit(one) for _ in range(4)]
        gate.set()
        for pending in [first, *queued]:
            pending.result(timeout=10)
        steady = [batcher.submit(one) for _ in range(4)]
        for pending in steady:
            pending.result(timeout=10)  # a minute's delay would time this out: the batch ran at four rows
    finally:
        gate.set()
        batcher.close()
    assert calls == [1, 4, 4]


def test_requests_of_a_two_input_model_stack_input_by_input_and_get_their_own_rows_of_each_output() -> None:
    """Features and a mask: rows stack per input; a request whose second input is shaped otherwise waits its turn."""
    calls: list[tuple[tuple[int, ...], ...]] = []
    gate = threading.Event()

    def run(x: Rows) -> Rows:
        gate.wait(5)
        calls.append(tuple(a.shape for a in x))
        features, mask = x
        return features.sum(axis=1, keepdims=True), mask.sum(axis=1)

    batcher = MicroBatcher(run, max_batch_size=8, max_queue_delay_ms=0, max_queue_depth=16)
    rng = np.random.default_rng(2)
    requests = [(rng.standard_normal((n, 3)).astype(np.float32), (rng.random((n, 3)) > 0.5).astype(np.float32))
                for n in (1, 2, 1)]
    odd = (np.ones((1, 3), np.float32), np.ones((1, 5), np.float32))  # alike in the first input only
    occupy(batcher, *requests[0])  # holds the model until the gate opens
    futures = [batcher.submit(r) for r in (requests[0], odd, *requests[1:])]
    gate.set()
    results = [f.result(timeout=5) for f in futures]
    batcher.close()
    assert calls[1:] == [((4, 3), (4, 3)), ((1, 3), (1, 5))]
    for (features, mask), (summed, counted) in zip((requests[0], odd, *requests[1:]), results, strict=True):
        np.testing.assert_allclose(summed, features.sum(axis=1, keepdims=True), rtol=1e-6)
        np.testing.assert_array_equal(counted, mask.sum(axis=1))
