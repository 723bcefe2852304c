"""What `fedge-agent` and `fedge-cloud` share: a parser of registered subcommands and the dispatch.

Each subcommand lives with the code it drives and registers itself through an
``add_*(commands)`` function that sets ``run=function(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from agent.exit_codes import ExitCode

Commands = "argparse._SubParsersAction[argparse.ArgumentParser]"
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser(prog: str, description: str, subcommands: Sequence[Registrar]) -> argparse.ArgumentParser:
    """A parser with ``--version`` and one subparser per registrar, in ``--help`` order."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=f"Run '{prog} COMMAND --help' for a command's options."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in subcommands:
        register(commands)
    return parser


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, run the chosen subcommand, and turn interrupts and closed pipes into exit codes."""
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return ExitCode.INVALID_INPUT
    try:
        return int(run(args))
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK


def print_help_of(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A run function for a command given without its action (``fedge-cloud models``): its help, exit 2."""

    def run(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return ExitCode.INVALID_INPUT

    return run


def _version() -> str:
    try:
        return metadata.version("fedge")
    except metadata.PackageNotFoundError:
        return "unknown"


def os_error_reason(exc: OSError) -> str:
    """``No space left on device: /tmp/x``, for a one-line message; an OSError without errno has only its text."""
    if exc.strerror is None:
        return str(exc)
    return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
