"""Numbered exit codes shared by `fedge-agent` and `fedge-cloud`.

Scripts and systemd units branch on these, so they never change meaning.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status."""

    OK = 0
    FAILURE = 1  # the command ran and did not succeed (e.g. a budget not met)
    INVALID_INPUT = 2  # bad profile, recipe, file or argument: fix the input and retry
    UNAVAILABLE = 3  # a needed service (broker, store) could not be reached
    INTERRUPTED = 130  # stopped by SIGINT before finishing
