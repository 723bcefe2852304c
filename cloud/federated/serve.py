"""``fedge-cloud fl serve``: a SuperLink, the training window, one federated run, and the round table.

The ServerApp runs in Flower's own process under the SuperLink and writes each
round to the registry; this process prints the rounds as they land there. It
also supervises: a SuperLink that dies is started again on the same database,
and the run is submitted again under the same fedge run id, so the round loop
resumes from the aggregate it kept after the last finished round.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from agent.mqtt_client import BrokerSettings
from agent.protocol import Topics
from cloud.federated.settings import FederatedSettings
from cloud.federated.superlink import SuperLink, SuperLinkError, write_app
from cloud.federated.window import WindowPublisher
from cloud.registry import RoundRecord, open_registry

log = logging.getLogger(__name__)
POLL_S = 1.0
STATUS_EVERY_S = 3.0
MAX_RESUMES = 3
LEAVE_TIMEOUT_S = 20.0
FINISHED_OK = "finished:completed"


@dataclass(frozen=True)
class ServeOutcome:
    completed: bool
    status: str
    rounds: list[RoundRecord]
    resumes: int


def serve(settings: FederatedSettings, superlink: SuperLink, broker: BrokerSettings | None, topics: Topics,
          report: Callable[[RoundRecord], None], stopping: Callable[[], bool] = lambda: False,
          node_keys: Sequence[Path] = ()) -> ServeOutcome:
    """Run ``settings`` on ``superlink`` (started here, stopped after) until the run finishes or fails for good.

    ``node_keys``: SuperNode public keys to register (node authentication) once the SuperLink is up.
    """
    settings = settings if settings.run else settings.replace(run=uuid.uuid4().hex[:12])
    settings.check()
    window: AbstractContextManager[WindowPublisher | None] = (
        WindowPublisher(broker, topics, settings.run, settings.task) if broker is not None else nullcontext())
    superlink.start()
    for key in node_keys:
        superlink.register_node(key)
    resumes, status, seen = 0, "unknown", 0
    try:
        with window as publisher:
            while True:
                if publisher is not None:
                    publisher.open(settings.rounds * settings.round_timeout_s + 300)
                flower_run = superlink.submit(write_app(Path(settings.state_dir) / "app", settings))
                log.info("fedge run %s is Flower run %s on %s", settings.run, flower_run, superlink.address)
                status, seen = _follow(superlink, flower_run, settings, report, seen, stopping)
                done = _rounds(settings)
                if status == FINISHED_OK or stopping():
                    break
                if resumes >= MAX_RESUMES or (done and done[-1].round >= settings.rounds):
                    break
                resumes += 1
                log.warning("Flower run %s ended %s after round %s; resuming (%d of %d)", flower_run, status,
                            done[-1].round if done else 0, resumes, MAX_RESUMES)
        if broker is not None:
            _let_nodes_leave(superlink)
    finally:
        superlink.stop()
    return ServeOutcome(status == FINISHED_OK, status, _rounds(settings), resumes)


def _let_nodes_leave(superlink: SuperLink) -> None:
    """Once the window is closed, give the SuperNodes time to sign off before the SuperLink stops.

    A SuperNode that stops (SIGTERM) tells the SuperLink so; if the SuperLink is gone by then, its
    database keeps the node online, and the next run on that database sends it rounds until two
    missed heartbeats (about a minute) declare it gone: measured, 3 ghosts in every later round.
    """
    deadline = time.monotonic() + LEAVE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if superlink.online_nodes() == 0:
                return
        except SuperLinkError as exc:
            log.warning("could not list the SuperNodes: %s", exc)
            return
        time.sleep(POLL_S)
    log.warning("SuperNodes still online %g s after the window closed; stopping the SuperLink anyway",
                LEAVE_TIMEOUT_S)


def _rounds(settings: FederatedSettings) -> list[RoundRecord]:
    with open_registry(settings.registry or None) as registry:
        return registry.rounds(settings.run)


def _follow(superlink: SuperLink, flower_run: int, settings: FederatedSettings,
            report: Callable[[RoundRecord], None], seen: int, stopping: Callable[[], bool]) -> tuple[str, int]:
    """Report new rounds until the run finishes, the SuperLink dies (restarted here) or we are told to stop."""
    status, checked = "running", 0.0
    while True:
        rounds = _rounds(settings)
        for record in rounds[seen:]:
            report(record)
        seen = len(rounds)
        if stopping():
            superlink.stop_run(flower_run)
            return "stopped", seen
        if not superlink.running:
            log.warning("the SuperLink exited (%s); starting it again on the same database",
                        superlink.log_tail(3).replace("\n", " | "))
            superlink.start()
            return "superlink restarted", seen
        if time.monotonic() - checked >= STATUS_EVERY_S:
            checked = time.monotonic()
            try:
                status = superlink.run_status(flower_run)
            except SuperLinkError as exc:
                log.warning("could not read the run's status: %s", exc)
            if status.startswith("finished"):
                for record in _rounds(settings)[seen:]:
                    report(record)
                return status, len(_rounds(settings))
        time.sleep(POLL_S)
