"""The Flower ServerApp: fedge's round loop on whatever grid Flower gives it.

In a deployment (``fedge-cloud fl serve``) the SuperLink starts this module's
``app`` in a process of its own and hands it the run's config; in a simulation
(``fedge-cloud fl simulate``) ``server_app_for`` builds one around settings in
the simulating process. Either way the rounds go to the registry, where
``fl serve`` and ``fl status`` read them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cloud.federated.rounds import RoundLoop
from cloud.federated.settings import FederatedSettings
from cloud.registry import RoundRecord, open_registry

log = logging.getLogger(__name__)


def run(grid: Grid, settings: FederatedSettings, report: Callable[[RoundRecord], None] = lambda _r: None) -> None:
    """Every round of one run, recorded in the settings' registry."""
    with open_registry(settings.registry or None) as registry:
        RoundLoop(grid, settings, registry, report).run()


def server_app_for(settings: FederatedSettings, report: Callable[[RoundRecord], None]) -> ServerApp:
    """A ServerApp bound to ``settings`` (a simulation passes the app object, not a run config)."""
    bound = ServerApp()

    @bound.main()
    def main(grid: Grid, _context: Context) -> None:
        run(grid, settings, report)

    return bound


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The deployment's entry point: settings from the run config ``fl serve`` submitted."""
    run(grid, FederatedSettings.from_run_config(dict(context.run_config)))
