"""The coordinator's registry: model versions with their states, the devices of the fleet, federated rounds.

One interface, two backends (SQLite embedded, PostgreSQL by URL), one shared test
suite (tests/test_registry.py) run against both, so callers never care which
one a deployment uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; fedge runs on 3.10 too


class ModelState(str, Enum):
    """Where a model version is in its rollout."""

    STAGED = "staged"  # published, not serving
    CANARY = "canary"  # serving a slice of a device group
    ACTIVE = "active"  # serving everyone; one version per (task, name)
    RETIRED = "retired"  # replaced or rolled back


class RegistryUnavailable(Exception):
    """The registry's database could not be opened or reached; the message says which and why."""


@dataclass(frozen=True)
class ModelRecord:
    task: str
    name: str
    version: int
    state: ModelState
    metrics: dict[str, float]
    updated_at: float


@dataclass(frozen=True)
class ModelEvent:
    """One state change of a model version, and why."""

    task: str
    name: str
    version: int
    state: ModelState
    reason: str
    at: float


@dataclass(frozen=True)
class DeviceRecord:
    """What the registry knows about a device from its last heartbeat and status.

    ``group`` picks canary targets: the heartbeat's ``group``, else its ``kind``.
    ``p99_ms`` is the worst p99 over the device's latency paths (local, offload).
    """

    device_id: str
    kind: str
    online: bool
    models: dict[str, str]
    offload_rate: float | None
    p99_ms: float | None
    last_seen: float
    group: str


@dataclass(frozen=True)
class RoundRecord:
    """One federated round as the server saw it (``fedge-cloud fl status`` prints these).

    ``accuracy`` is the aggregate's on the cloud's held-out data; ``offload_rate`` the fleet's (from
    heartbeats) or, in a simulation, the one the aggregate needs for 0.99x the cloud's accuracy;
    ``release`` the version published after this round, or why none was. ``details`` holds the rest
    (the devices' mean metrics, Flower's share of the round's time, bytes per client).
    """

    run: str
    task: str
    round: int
    participants: int
    declined: int
    dropped: int
    examples: int
    accuracy: float | None
    offload_rate: float | None
    release: str | None
    seconds: float
    at: float
    details: dict[str, Any]


class Registry(ABC):
    """Model versions and devices; every method is one transaction, safe for several processes."""

    @abstractmethod
    def add_model(self, task: str, name: str, version: int, state: ModelState = ModelState.STAGED,
                  metrics: dict[str, float] | None = None) -> None:
        """Add a model version; adding one already there changes nothing."""

    @abstractmethod
    def set_model_state(self, task: str, name: str, version: int, state: ModelState, reason: str = "") -> None:
        """Move a version to ``state`` and record the event; ACTIVE retires the name's previous active version.

        Setting the state a version already has records nothing. Unknown version: KeyError.
        """

    @abstractmethod
    def update_model_metrics(self, task: str, name: str, version: int, metrics: dict[str, float]) -> None:
        """Merge ``metrics`` into the version's metrics. Unknown version: KeyError."""

    @abstractmethod
    def models(self, task: str | None = None) -> list[ModelRecord]:
        """Every version (of ``task``), ordered by task, name, version."""

    @abstractmethod
    def model_history(self, task: str, name: str) -> list[ModelEvent]:
        """State changes of every version of ``task/name``, oldest first (kept whole: they are rare)."""

    @abstractmethod
    def active(self, task: str) -> list[ModelRecord]:
        """The ACTIVE versions of a task: at most one per model name."""

    @abstractmethod
    def record_heartbeat(self, device_id: str, heartbeat: dict[str, Any], received_at: float) -> None:
        """Update the device from a heartbeat (it is online) and keep the heartbeat in its history.

        A heartbeat whose fields have the wrong types raises ValueError naming the field.
        """

    @abstractmethod
    def record_presence(self, device_id: str, online: bool, at: float) -> None:
        """Mark a device online or offline (status topic, Last Will); history keeps changes only."""

    @abstractmethod
    def record_feedback(self, device_id: str, session: str, counts: dict[tuple[str, str, int], tuple[int, int]]
                        ) -> dict[tuple[str, str, int], tuple[int, int]]:
        """Keep a device's cumulative labelled-answer counts of one agent session (cloud/fleet/feedback.py).

        ``counts``: (task, name, version) -> (n, correct). A count that is not larger than the one kept
        (a repeated or late heartbeat) changes nothing. Returns, for each version whose count changed,
        its (n, correct) summed over every device and session.
        """

    @abstractmethod
    def devices(self) -> list[DeviceRecord]:
        """Every known device, ordered by id."""

    @abstractmethod
    def device_history(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The device's latest heartbeats and presence changes, newest first.

        Each is ``{"at": seconds, "event": "heartbeat"|"online"|"offline", "data": heartbeat or {}}``.
        """

    @abstractmethod
    def record_round(self, record: RoundRecord) -> None:
        """Keep one federated round (a round recorded again, after a resumed run repeats it, replaces it)."""

    @abstractmethod
    def rounds(self, run: str | None = None) -> list[RoundRecord]:
        """Federated rounds, oldest first: of one run, or of every run."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    @abstractmethod
    def model(self, task: str, name: str, version: int) -> ModelRecord | None:
        """One version, or None."""

    # -- built on the methods above ---------------------------------------------------

    def rollback(self, task: str, name: str, to: int | None = None) -> int:
        """Make ``to`` ACTIVE again (default: the latest version older than the active one that was active); return it.

        The event's reason is "rollback". Nothing to roll back to: LookupError saying so.
        """
        current = next((m.version for m in self.active(task) if m.name == name), None)
        if to is None:
            earlier = [e.version for e in self.model_history(task, name)
                       if e.state is ModelState.ACTIVE and (current is None or e.version < current)]
            if not earlier:
                raise LookupError(f"{task}/{name} has no earlier active version to roll back to"
                                  f" (active now: {f'v{current}' if current else 'none'}); name one with --to")
            to = earlier[-1]
        self.set_model_state(task, name, to, ModelState.ACTIVE, reason="rollback")
        return to

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
