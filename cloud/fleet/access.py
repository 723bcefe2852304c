"""Broker access for a fleet: one Mosquitto user per device and service, and an ACL that keeps them apart.

A device may publish only its own status and heartbeat and inference requests,
and read only its own replies, the model manifests and the cloud status, so a
compromised device can neither read another's answers nor pose as the cloud.
Workers read requests and write replies; the coordinator writes the cloud
status and manifests and reads what devices report.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.config.loader import load_model
from agent.config.problems import error_at
from agent.config.yaml_source import DocumentKind
from agent.protocol import Topics
from agent.protocol.topics import check_segment
from cloud.fleet.passwords import write_password_file


class Fleet(BaseModel):
    """The devices file: who may connect to the broker, by role."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    topic_prefix: str = Field("fedge/v1", description="Topic prefix the fleet uses")
    devices: list[str] = Field(min_length=1, description="Device ids (MQTT user names), as in each profile")
    workers: list[str] = Field(["worker"], description="Users of fedge-cloud serve's workers")
    coordinators: list[str] = Field(["coordinator"], description="Users of the coordinator")


SECRETS = "secrets"  # the folder of one password file per user, beside the broker's password file
DEVICES_FILE = DocumentKind("devices file", "topic_prefix, devices, workers, coordinators",
                            "a devices file needs at least devices")


def load_fleet(path: Path) -> Fleet:
    """The devices file at ``path``, its user names checked; ConfigError naming the file (and line) otherwise."""
    fleet = load_model(path, Fleet, DEVICES_FILE)
    users = [*fleet.devices, *fleet.workers, *fleet.coordinators]
    for name in users:
        try:
            check_segment(name, "user name")
        except ValueError as exc:
            raise error_at(str(path), str(exc)) from None
    if len(set(users)) != len(users):
        raise error_at(str(path), "a user name appears twice; each device and service needs its own")
    return fleet


def acl_text(fleet: Fleet) -> str:
    """The Mosquitto ACL file for a fleet (shared subscriptions are checked against the plain topic)."""
    t = Topics(fleet.topic_prefix)
    p = fleet.topic_prefix
    blocks = []
    for device in fleet.devices:
        blocks.append([f"user {device}", f"topic write {p}/infer/#", f"topic write {t.device_status(device)}",
                       f"topic write {t.device_heartbeat(device)}", f"topic read {t.device_reply(device)}",
                       f"topic read {p}/models/#", f"topic read {t.cloud_status}", f"topic read {t.federated_window}"])
    for worker in fleet.workers:
        blocks.append([f"user {worker}", f"topic read {t.infer_filter}", f"topic write {p}/device/+/reply",
                       f"topic write {p}/replies/#", f"topic readwrite {t.worker_reports}"])
    for coordinator in fleet.coordinators:
        blocks.append([f"user {coordinator}", f"topic write {t.cloud_status}", f"topic write {p}/models/#",
                       f"topic write {t.federated_window}",
                       f"topic write {t.coordinator_presences}", f"topic read {t.worker_reports}",
                       f"topic read {t.device_status_filter}", f"topic read {t.device_heartbeat_filter}"])
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


@dataclass
class AccessFiles:
    passwords: Path
    acl: Path
    secrets: dict[str, str] = field(repr=False)
    created: list[str] = field(default_factory=list)

    def secret_file(self, user: str) -> Path:
        """The file holding ``user``'s password (what a profile's ``broker.password_file`` names)."""
        return self.passwords.parent / SECRETS / user


def write_access_files(fleet: Fleet, out: Path) -> AccessFiles:
    """Write ``passwords``, ``acl`` and ``secrets/<user>`` (kept if present, so re-runs keep passwords)."""
    secret_dir = out / SECRETS
    secret_dir.mkdir(parents=True, exist_ok=True)
    secret_dir.chmod(0o700)
    known: dict[str, str] = {}
    created = []
    for user in [*fleet.devices, *fleet.workers, *fleet.coordinators]:
        path = secret_dir / user
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24) + "\n")
            path.chmod(0o600)
            created.append(user)
        known[user] = path.read_text().strip()
    write_password_file(out / "passwords", known)
    (out / "acl").write_text(acl_text(fleet))
    return AccessFiles(out / "passwords", out / "acl", known, created)
