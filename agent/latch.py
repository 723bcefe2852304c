"""A one-shot result handed from one thread to a waiting one.

The agent's hot paths (a request queued for the local model, an offload waiting
for the cloud) wake one caller per result. A ``concurrent.futures.Future`` does
that through a condition: a waiter lock per wait, a Python-level notify and the
condition's lock taken again by the woken thread. A raw lock released once is the
cheapest wake-up CPython has, and every step it saves runs under the GIL on the
critical path of a request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Latch(Generic[T]):
    """Set once (a value or an exception) by one thread; ``result`` waits for it, any number of times."""

    __slots__ = ("_callbacks", "_done", "_error", "_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = False
        self._callbacks: list[Callable[[Latch[T]], None]] = []

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Callable[[Latch[T]], None]) -> None:
        """Call ``callback(self)`` once set: at once when set already, else on the thread that sets it.

        No lock: list append, pop and remove are atomic, and whichever side takes the
        callback out of the list calls it, so it runs exactly once even in a race with ``set``.
        """
        self._callbacks.append(callback)
        if self._done:
            try:
                self._callbacks.remove(callback)
            except ValueError:  # the setting thread took it and calls it
                return
            callback(self)

    def set_result(self, value: T) -> None:
        """Hand over ``value`` (RuntimeError if the latch was already set)."""
        self._settle(value, None)

    def set_exception(self, error: BaseException) -> None:
        """Make ``result`` raise ``error`` (RuntimeError if the latch was already set)."""
        self._settle(None, error)

    def _settle(self, value: T | None, error: BaseException | None) -> None:
        if self._done:
            raise RuntimeError("the latch is already set")
        self._value, self._error, self._done = value, error, True
        self._lock.release()
        while self._callbacks:
            try:
                callback = self._callbacks.pop(0)
            except IndexError:  # add_done_callback took the last one back and calls it itself
                break
            callback(self)

    def result(self, timeout: float | None = None) -> T:
        """The value, the exception set, or TimeoutError after ``timeout`` seconds."""
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("no result within the timeout")
        self._lock.release()  # stays readable for a second look
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set, since the lock was released
