"""`fedge-cloud`: the coordinator's command line (model zoo and store for now)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent.command_line import build_parser, dispatch
from cloud.access_commands import add_acl
from cloud.compress.commands import add_compress
from cloud.serving.commands import add_serve
from cloud.zoo.commands import add_models, add_train

SUBCOMMANDS = (add_train, add_models, add_compress, add_serve, add_acl)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(
        "fedge-cloud",
        "fedge cloud coordinator: trains and compresses models for the edge, keeps the model store,"
        " and (with the coordinator issue) serves large models to agents over MQTT v5.",
        SUBCOMMANDS,
    )
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
