"""Releases held just before they are swapped in: for tests that stop or kill an agent mid-swap.

``hold_swaps()`` patches the updater in this process; run as a script it starts
``fedge-agent`` with the patch (``python -m tests.held_updates run --profile ...``),
so a test can SIGKILL a real daemon with a release staged and not yet promoted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from agent.runtime import LocalModel
from agent.updates.updater import Updater


def hold_swaps() -> Callable[[], None]:
    """Make every swap wait, writing nothing, until its agent stops; returns the undo."""
    original = Updater._swap

    def held(self: Updater, task: str, model: LocalModel, into_store: Callable[[], object]) -> None:
        with self._cond:
            while not self._stopping:
                self._cond.wait()
        original(self, task, model, into_store)

    Updater._swap = held  # type: ignore[method-assign]

    def undo() -> None:
        Updater._swap = original  # type: ignore[method-assign]
    return undo


if __name__ == "__main__":
    from agent.cli import main

    hold_swaps()
    sys.exit(main())
