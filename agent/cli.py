"""`fedge-agent`: the edge agent's command line.

Each subcommand lives with the code it drives and registers itself through an
`add_*(commands)` function listed in SUBCOMMANDS (help order); parsing and
dispatch are shared with `fedge-cloud` in agent/command_line.py.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent.command_line import Registrar, build_parser, dispatch
from agent.commands import add_infer, add_run
from agent.profile.commands import add_schema, add_validate

SUBCOMMANDS: tuple[Registrar, ...] = (add_run, add_infer, add_validate, add_schema)
DESCRIPTION = (
    "fedge edge agent: runs ONNX models on this device and offloads hard or excess requests"
    " to the cloud over MQTT v5."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; the exit code follows agent/exit_codes.py."""
    return dispatch(build_parser("fedge-agent", DESCRIPTION, SUBCOMMANDS), argv)


if __name__ == "__main__":
    sys.exit(main())
