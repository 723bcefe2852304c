"""Signed model releases on the agent: verify, install crash-safely, shadow-evaluate, swap, report."""

from agent.updates.release import Release, ReleaseError
from agent.updates.updater import Updater

__all__ = ["Release", "ReleaseError", "Updater"]
