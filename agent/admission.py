"""How many of one model's HTTP requests are worked on at once (``models.<task>.max_concurrent_requests``).

Nobody waits on a lock: a request past the limit is parked, and the one that
leaves hands its place to the longest parked, so none is lost or overtaken.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Admission(Generic[T]):
    """At most ``limit`` requests inside (None: no limit); the rest wait their turn in order of arrival."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._inside = 0
        self._parked: deque[T] = deque()
        self._lock = threading.Lock()

    def enter(self, item: T) -> bool:
        """Whether ``item`` may be worked on now; if not it is parked, and a later ``leave`` returns it."""
        with self._lock:
            if self.limit is None or (self._inside < self.limit and not self._parked):
                self._inside += 1
                return True
            self._parked.append(item)
            return False

    def leave(self) -> T | None:
        """One request is done: the parked request that takes its place (now inside), if any."""
        with self._lock:
            if self._parked:
                return self._parked.popleft()
            self._inside -= 1
            return None
