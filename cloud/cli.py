"""`fedge-cloud`: the coordinator's command line.

The subcommands are imported inside ``main``, not at module level: `serve`
starts its workers with multiprocessing's spawn method, which re-imports this
module (the console script's ``__main__``) in every worker, and the training
and compression commands pull in torch. A worker needs ONNX Runtime only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial

from agent.command_line import Registrar, build_parser, dispatch


def subcommands() -> tuple[Registrar, ...]:
    """Every subcommand's registrar, in ``--help`` order."""
    from cloud.compress.commands import add_compress
    from cloud.federated.commands import add_fl
    from cloud.fleet.commands import add_acl, add_devices, add_listen
    from cloud.imports.commands import add_calibrate, add_import
    from cloud.registry.commands import add_state_actions
    from cloud.releases.commands import add_keys, add_publish, add_rollout
    from cloud.serving.commands import add_serve
    from cloud.zoo.commands import add_models, add_train

    # `models` actions beyond `list` live with what they drive
    models_actions = (add_import, add_calibrate, add_state_actions, add_publish)
    return (add_train, partial(add_models, more_actions=models_actions), add_compress, add_serve, add_acl,
            add_devices, add_listen, add_keys, add_rollout, add_fl)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(
        "fedge-cloud",
        "fedge cloud coordinator: trains, compresses, signs and rolls out models for the edge, serves the large"
        " models to agents over MQTT v5, and keeps the registry of devices and model versions.",
        subcommands(),
    )
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
