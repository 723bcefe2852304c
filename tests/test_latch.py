"""The one-shot latch that hands results to waiting callers (queued inferences, offloads in flight)."""

from __future__ import annotations

import threading

import pytest

from agent.latch import Latch


def test_a_waiting_thread_gets_the_value_and_can_read_it_again() -> None:
    latch: Latch[int] = Latch()
    threading.Timer(0.05, latch.set_result, args=(7,)).start()
    assert latch.result(timeout=5) == 7 and latch.result(timeout=0) == 7 and latch.done()


def test_an_exception_is_raised_to_the_waiter_and_a_second_set_is_refused() -> None:
    latch: Latch[int] = Latch()
    latch.set_exception(ValueError("broken"))
    with pytest.raises(ValueError, match="broken"):
        latch.result(timeout=0)
    with pytest.raises(RuntimeError, match="already set"):
        latch.set_result(1)


def test_result_times_out_while_unset() -> None:
    latch: Latch[int] = Latch()
    with pytest.raises(TimeoutError):
        latch.result(timeout=0.01)
    assert not latch.done()


def _race_once() -> list[int]:
    """Set a latch while another thread adds callbacks; the numbers its callbacks recorded."""
    latch: Latch[int] = Latch()
    calls: list[int] = []
    latch.add_done_callback(lambda done: calls.append(done.result(timeout=0)))

    def add_many() -> None:
        for _ in range(20):
            latch.add_done_callback(lambda _done: calls.append(-1))

    adder = threading.Thread(target=add_many)
    adder.start()
    latch.set_result(5)
    adder.join()
    latch.add_done_callback(lambda _done: calls.append(9))
    return calls


def test_each_callback_runs_exactly_once_whether_added_before_or_after_or_racing_the_set() -> None:
    for _ in range(300):
        assert sorted(_race_once()) == [-1] * 20 + [5, 9]
