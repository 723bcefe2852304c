"""A staged rollout: a canary slice of a device group first, then the whole group, or back.

The release is signed and retained on the group's release topic; the model
file is retained on its artifact topic. Canary devices report through their
heartbeats what became of the release (installed, or refused by their shadow
gate with a reason). All canaries on the new version → the release goes to the
whole group and the version becomes ACTIVE; any refusal or silence → a signed
rollback to the previous version goes to the group and the version is RETIRED,
with the reason in the registry's history.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.manifest import ManifestError
from agent.model_store import ModelStore, StoredModel
from agent.updates import Release
from cloud.keys import sign
from cloud.registry import ModelState, Registry
from cloud.release_channel import Heartbeats, ReleaseChannel

log = logging.getLogger(__name__)
Action = Literal["install", "rollback"]


class RolloutError(Exception):
    """A rollout that cannot start (unsigned model, no devices); the message says what to do."""


@dataclass(frozen=True)
class RolloutPlan:
    task: str
    name: str
    version: int
    group: str = "default"
    canary_fraction: float = 0.1
    health_timeout_s: float = 120.0


@dataclass(frozen=True)
class RolloutResult:
    outcome: Literal["promoted", "rolled back"]
    canary: list[str]
    reason: str
    previous: int | None


def signed_release(stored: StoredModel, action: Action, group: str, devices: list[str] | None,
                   key: Ed25519PrivateKey) -> Release:
    """A release of a published (signed) model version, signed as a whole."""
    m = stored.manifest
    if not m.signature:
        raise RolloutError(f"{m.task}/{m.name} v{m.version} is not signed: run fedge-cloud models publish"
                           f" --task {m.task} --name {m.name} --version {m.version} first")
    return sign(Release(action=action, group=group, devices=devices, manifest=m), key)


def pick_canary(device_ids: list[str], fraction: float) -> list[str]:
    """The first ceil(fraction x n) devices by id (at least one): the same slice every time."""
    return sorted(device_ids)[:max(1, math.ceil(fraction * len(device_ids)))]


def canary_verdict(heartbeats: Heartbeats, canary: list[str], release: Release) -> tuple[bool, str] | None:
    """(healthy, why) once every canary reported on ``release`` or one refused it; None while waiting."""
    m = release.manifest
    issued = release.issued_at.isoformat()
    pending = []
    for device in canary:
        outcome = (heartbeats.get(device, {}).get("updates") or {}).get(m.task) or {}
        if outcome.get("issued_at") != issued:
            pending.append(device)
        elif outcome.get("state") != "active":
            return False, f"{device} refused v{m.version}: {outcome.get('reason', 'no reason given')}"
    return (True, f"v{m.version} serves on {', '.join(canary)}") if not pending else None


class Rollout:
    """Runs one plan against a store, a registry and the broker."""

    def __init__(self, store: ModelStore, registry: Registry, channel: ReleaseChannel, key: Ed25519PrivateKey) -> None:
        self.store, self.registry, self.channel, self.key = store, registry, channel, key

    def run(self, plan: RolloutPlan) -> RolloutResult:
        try:
            stored = self.store.verified(plan.task, plan.name, plan.version)
        except ManifestError as exc:
            raise RolloutError(str(exc)) from None
        devices = self._group(plan)
        canary = pick_canary(devices, plan.canary_fraction)
        previous = self._previous(plan)
        release = signed_release(stored, "install", plan.group, canary, self.key)
        self.registry.add_model(plan.task, plan.name, plan.version, metrics=stored.manifest.metrics)
        self.channel.publish_artifact(stored)
        self.registry.set_model_state(plan.task, plan.name, plan.version, ModelState.CANARY,
                                      f"canary on {', '.join(canary)} of group {plan.group}")
        self.channel.publish_release(release)
        log.info("canary release of %s/%s v%s to %s", plan.task, plan.name, plan.version, canary)
        verdict: dict[str, tuple[bool, str]] = {}

        def decided(heartbeats: Heartbeats) -> bool:
            found = canary_verdict(heartbeats, canary, release)
            if found is not None:
                verdict["result"] = found
            return found is not None

        if not self.channel.wait_until(decided, plan.health_timeout_s):
            silent = f"no report on v{plan.version} from the canary within {plan.health_timeout_s:g} s"
            verdict["result"] = (False, silent)
        healthy, why = verdict["result"]
        if healthy:
            self.channel.publish_release(signed_release(stored, "install", plan.group, None, self.key))
            self.registry.set_model_state(plan.task, plan.name, plan.version, ModelState.ACTIVE,
                                          f"canary healthy ({why}); released to group {plan.group}")
            return RolloutResult("promoted", canary, why, previous)
        self._roll_back(plan, previous, why)
        return RolloutResult("rolled back", canary, why, previous)

    def _group(self, plan: RolloutPlan) -> list[str]:
        devices = [d for d in self.registry.devices() if d.group == plan.group and d.online and plan.task in d.models]
        if not devices:
            known = ", ".join(f"{d.device_id} ({d.group}, {'online' if d.online else 'offline'})"
                              for d in self.registry.devices()) or "none"
            raise RolloutError(f"no online device of group {plan.group!r} runs task {plan.task!r}"
                               f" (devices the registry knows: {known}); is the device listener running?")
        return [d.device_id for d in devices]

    def _previous(self, plan: RolloutPlan) -> int | None:
        """The version to go back to: the registry's active one, else the newest older one the group runs."""
        active = [m.version for m in self.registry.active(plan.task) if m.name == plan.name and m.version != plan.version]
        if active:
            return active[0]
        running = [int(v) for d in self.registry.devices() if d.group == plan.group
                   for t, v in d.models.items() if t == plan.task and v.isdigit() and int(v) < plan.version]
        return max(running) if running else None

    def _roll_back(self, plan: RolloutPlan, previous: int | None, why: str) -> None:
        if previous is None:
            self.channel.clear_release(plan.task, plan.group)
            reason = f"canary failed ({why}); no earlier version, release withdrawn"
        else:
            back = self.store.verified(plan.task, plan.name, previous)
            self.channel.publish_artifact(back)
            self.channel.publish_release(signed_release(back, "rollback", plan.group, None, self.key))
            reason = f"canary failed ({why}); group {plan.group} rolled back to v{previous}"
        log.warning("%s/%s v%s: %s", plan.task, plan.name, plan.version, reason)
        self.registry.set_model_state(plan.task, plan.name, plan.version, ModelState.RETIRED, reason)


def summary(result: RolloutResult, plan: RolloutPlan) -> dict[str, Any]:
    """The rollout's outcome as the command prints it with --json."""
    return {"task": plan.task, "name": plan.name, "version": plan.version, "group": plan.group,
            "outcome": result.outcome, "canary": result.canary, "reason": result.reason, "previous": result.previous}
