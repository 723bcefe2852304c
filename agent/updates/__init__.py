"""Signed model releases on the agent: verify, install crash-safely, shadow-evaluate, swap, report."""

from agent.updates.release import Release, ReleaseError
from agent.updates.updater import HOLD_ENV, Updater

__all__ = ["HOLD_ENV", "Release", "ReleaseError", "Updater"]
