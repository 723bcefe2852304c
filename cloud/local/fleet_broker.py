"""A private broker locked down as a deployed fleet's is: one user per device and service, and the fleet's ACL.

``fedge-cloud fl loop`` (and so ``make demo``) runs its agents, workers and coordinator
behind the same password file and ACL that ``fedge-cloud acl`` writes for a real fleet
(cloud/fleet/access.py), so what the loop shows working is what a deployment allows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.mqtt_client import BrokerSettings
from cloud.fleet.access import AccessFiles, Fleet, acl_text, write_access_files
from cloud.local.agents import local_overrides
from cloud.local.mosquitto import Mosquitto

WORKER, COORDINATOR = "worker", "coordinator"


@dataclass(frozen=True)
class FleetBroker:
    """The running broker and every user's credentials."""

    broker: Mosquitto
    access: AccessFiles

    def settings_for(self, user: str) -> BrokerSettings:
        """How ``user`` (a device id, ``worker`` or ``coordinator``) reaches the broker."""
        return dataclasses.replace(self.broker.settings, username=user, password=self.access.secrets[user])

    def agent_overrides(self, device_id: str, state: Path) -> dict[str, str]:
        """``FEDGE__*`` overrides for a shipped profile: this broker, the device's own user and password file."""
        return {**local_overrides(self.broker, state), "FEDGE__DEVICE__ID": device_id,
                "FEDGE__BROKER__USERNAME": device_id,
                "FEDGE__BROKER__PASSWORD_FILE": str(self.access.secret_file(device_id))}


@contextmanager
def fleet_broker(workdir: Path, devices: Sequence[str]) -> Iterator[FleetBroker]:
    """A Mosquitto under ``workdir`` for ``devices`` plus one worker and one coordinator user; stopped after."""
    fleet = Fleet(devices=list(devices), workers=[WORKER], coordinators=[COORDINATOR])
    access = write_access_files(fleet, workdir / "access")
    with Mosquitto(workdir / "broker", users=access.secrets, acl=acl_text(fleet)) as broker:
        yield FleetBroker(broker, access)
