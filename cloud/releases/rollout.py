"""A staged rollout: a canary slice of a device group first, then the whole group, or back.

The release is signed and retained on the group's release topic; the model
file is retained on its artifact topic. Canary devices report through their
heartbeats what became of the release (installed, or refused by their shadow
gate with a reason). All canaries on the new version → the release goes to the
whole group and the version becomes ACTIVE; any refusal, silence or Ctrl-C → a signed
rollback to the previous version goes to the group and the version is RETIRED,
with the reason in the registry's history.

The rollback is checked and signed before the canary release goes out: a
rollout that could not undo itself does not start, unless the operator says it
is a first release (then a failed canary is withdrawn, and canaries that
installed it keep it: nothing older is there to go back to).
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.decimal_text import decimal
from agent.manifest import ManifestError
from agent.model_store import ModelStore, StoredModel
from agent.signing import SignatureError, verify
from agent.updates import Release
from agent.updates.release import Action
from cloud.registry import ModelState, Registry
from cloud.releases.channel import Heartbeats, ReleaseChannel
from cloud.releases.signing import sign
from cloud.sigint import sigint_ignored

log = logging.getLogger(__name__)


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
    first_release: bool = False  # no earlier version to roll back to is expected: a failed canary is withdrawn


@dataclass(frozen=True)
class RolloutResult:
    outcome: Literal["promoted", "rolled back", "withdrawn"]
    canary: list[str]
    reason: str
    previous: int | None
    interrupted: bool = False  # the operator stopped the wait (Ctrl-C): the canary was undone, not judged


def signed_release(stored: StoredModel, action: Action, group: str, devices: list[str] | None,
                   key: Ed25519PrivateKey, *, issued_at: datetime | None = None) -> Release:
    """A release of a published (signed) model version, signed as a whole; ``issued_at`` defaults to now."""
    m = stored.manifest
    if not m.signature:
        raise RolloutError(f"{m.task}/{m.name} v{m.version} is not signed: run {_publish_hint(stored)} first")
    release = Release(action=action, group=group, devices=devices, manifest=m)
    if issued_at is not None:
        release = release.model_copy(update={"issued_at": issued_at})
    return sign(release, key)


def _publish_hint(stored: StoredModel) -> str:
    m = stored.manifest
    return f"fedge-cloud models publish --task {m.task} --name {m.name} --version {m.version}"


def pick_canary(device_ids: list[str], fraction: float) -> list[str]:
    """The first ceil(fraction x n) devices by id (at least one): the same slice every time."""
    return sorted(device_ids)[:max(1, math.ceil(fraction * len(device_ids)))]


def canary_verdict(heartbeats: Heartbeats, canary: list[str], release: Release) -> tuple[bool, str] | None:
    """(healthy, why) once every canary reported on ``release`` or one refused it; None while waiting.

    Only an outcome naming this release (its ``issued_at``) counts: a device's report on an
    older release says nothing about this one. A canary that could not verify a message claiming
    to be this release (another key signed it) fails it: waiting longer would not change that.
    """
    m = release.manifest
    pending = []
    for device in canary:
        heartbeat = heartbeats.get(device, {})
        outcome = _task_entry(heartbeat, "updates", m.task)
        if outcome is None or _issued_at(outcome) != release.issued_at:
            unverified = _task_entry(heartbeat, "last_unverified", m.task)
            if unverified is not None and _issued_at(unverified) == release.issued_at \
                    and unverified.get("version") == m.version:  # it could not check this release's signature
                return False, (f"{device} could not verify the release of v{m.version}:"
                               f" {unverified.get('reason', 'no reason given')} (is it signed with the key the"
                               " devices trust?)")
            pending.append(device)
        elif outcome.get("state") != "active" or outcome.get("version") != m.version:
            return False, f"{device} refused v{m.version}: {outcome.get('reason', 'no reason given')}"
    return (True, f"v{m.version} serves on {', '.join(canary)}") if not pending else None


def _task_entry(heartbeat: dict[str, Any], field: str, task: str) -> dict[str, Any] | None:
    """``heartbeat[field][task]`` where it is a mapping; None for a malformed heartbeat (no report)."""
    entries = heartbeat.get(field)
    entry = entries.get(task) if isinstance(entries, dict) else None
    return entry if isinstance(entry, dict) else None


def _issued_at(outcome: dict[str, Any]) -> datetime | None:
    """The release an outcome belongs to; None when it names none (or nothing readable)."""
    value = outcome.get("issued_at")
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _Rollback:
    """The way back, made before the canary goes out: the version and its signed rollback release."""

    stored: StoredModel
    release: Release


class Rollout:
    """Runs one plan against a store, a registry and the broker."""

    def __init__(self, store: ModelStore, registry: Registry, channel: ReleaseChannel, key: Ed25519PrivateKey) -> None:
        self.store, self.registry, self.channel, self.key = store, registry, channel, key

    def run(self, plan: RolloutPlan) -> RolloutResult:
        """Canary, judge, then promote or go back; RolloutError before anything is published if it cannot start."""
        try:
            stored = self._releasable(self.store.verified(plan.task, plan.name, plan.version))
        except ManifestError as exc:
            raise RolloutError(str(exc)) from None
        devices = self._group(plan)
        canary = pick_canary(devices, plan.canary_fraction)
        release = signed_release(stored, "install", plan.group, canary, self.key)
        back = self._way_back(plan, release)
        self.registry.add_model(plan.task, plan.name, plan.version, metrics=stored.manifest.metrics)
        try:
            healthy, why = self._canary(plan, stored, canary, release)
        except KeyboardInterrupt:  # never leave a canary half-released: undo it, unjudged
            with sigint_ignored():
                print("interrupted: undoing the canary, please wait", file=sys.stderr, flush=True)
                return self._roll_back(plan, canary, back, "interrupted before the canary reported",
                                       interrupted=True)
        with sigint_ignored():  # the verdict is carried out whole: release and registry agree
            if healthy:
                self.channel.publish_release(signed_release(stored, "install", plan.group, None, self.key))
                self.registry.set_model_state(plan.task, plan.name, plan.version, ModelState.ACTIVE,
                                              f"canary healthy ({why}); released to group {plan.group}")
                return RolloutResult("promoted", canary, why, None if back is None else back.stored.manifest.version)
            return self._roll_back(plan, canary, back, why)

    def _canary(self, plan: RolloutPlan, stored: StoredModel, canary: list[str], release: Release) -> tuple[bool, str]:
        """Release to the canary and wait for its verdict: (healthy, why)."""
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
            return False, f"no report on v{plan.version} from the canary within {plan.health_timeout_s:g} s"
        return verdict["result"]

    def _releasable(self, stored: StoredModel) -> StoredModel:
        """``stored``, if its manifest carries this key's signature (what agents will check)."""
        m = stored.manifest
        try:
            verify(m, self.key.public_key(), f"{m.task}/{m.name} v{m.version}")
        except SignatureError as exc:
            raise RolloutError(f"{exc}; sign it with this key: {_publish_hint(stored)}") from None
        return stored

    def _way_back(self, plan: RolloutPlan, canary: Release) -> _Rollback | None:
        """The signed rollback to the previous version, ready before the canary goes out.

        It is issued just after the canary release, so a canary that handled that one still takes it.
        None only for a first release; otherwise nothing valid to go back to is a RolloutError.
        """
        previous = self._previous(plan)
        if previous is None:
            problem = (f"no earlier version of {plan.task}/{plan.name} to roll back to (no other version is active in the"
                       f" registry and no device of group {plan.group!r} runs an older one)")
        else:
            try:
                back = self._releasable(self.store.verified(plan.task, plan.name, previous))
                release = signed_release(back, "rollback", plan.group, None, self.key,
                                         issued_at=canary.issued_at + timedelta(microseconds=1))
                return _Rollback(back, release)
            except (ManifestError, RolloutError) as exc:
                problem = f"cannot roll back to v{previous}: {exc}"
        if plan.first_release:
            log.warning("%s; first release: a failed canary is withdrawn and canaries that installed it keep it",
                        problem)
            return None
        raise RolloutError(f"{problem}, so a failed canary could not be undone. Publish (sign) the version to go"
                           " back to, or, for a first release, pass --first-release: a failed canary is then"
                           " withdrawn, and canaries that installed it keep it")

    def _group(self, plan: RolloutPlan) -> list[str]:
        devices = [d for d in self.registry.devices() if d.group == plan.group and d.online and plan.task in d.models]
        if not devices:
            known = ", ".join(f"{d.device_id} ({d.group}, {'online' if d.online else 'offline'})"
                              for d in self.registry.devices()) or "none"
            raise RolloutError(f"no online device of group {plan.group!r} runs task {plan.task!r}"
                               f" (devices the registry knows: {known}); is the device listener running?")
        record = self.registry.model(plan.task, plan.name, plan.version)
        active = record is not None and record.state is ModelState.ACTIVE  # not one a killed rollout left at canary
        if active and all(d.models[plan.task] == str(plan.version) for d in devices):  # the same rollout run twice
            raise RolloutError(f"every online device of group {plan.group!r} ({', '.join(d.device_id for d in devices)})"
                               f" already runs v{plan.version} of {plan.task}: nothing to roll out")
        return [d.device_id for d in devices]

    def _previous(self, plan: RolloutPlan) -> int | None:
        """The version to go back to: the registry's active one, else the newest older one the group runs."""
        active = [m.version for m in self.registry.active(plan.task) if m.name == plan.name and m.version != plan.version]
        if active:
            return active[0]
        running = [n for d in self.registry.devices() if d.group == plan.group for t, v in d.models.items()
                   if t == plan.task and (n := decimal(v)) is not None and n < plan.version]
        return max(running) if running else None

    def _roll_back(self, plan: RolloutPlan, canary: list[str], back: _Rollback | None, why: str,
                   interrupted: bool = False) -> RolloutResult:
        """Undo the canary (a failed one, or an interrupted one that was never judged) and retire the version."""
        what = f"rollout {why}" if interrupted else f"canary failed ({why})"
        try:
            if back is None:
                self.channel.clear_release(plan.task, plan.group)
                reason = (f"{what}; first release, so it was withdrawn: canaries that installed it"
                          f" ({', '.join(canary)}) keep it")
            else:
                self.channel.publish_artifact(back.stored)
                self.channel.publish_release(back.release)
                reason = f"{what}; group {plan.group} rolled back to v{back.stored.manifest.version}"
        except ConnectionError as exc:  # the registry keeps saying canary, which is the truth
            raise ConnectionError(f"v{plan.version}: {what}, but going back failed too: {exc};"
                                  f" v{plan.version} stays on {', '.join(canary)}") from None
        log.warning("%s/%s v%s: %s", plan.task, plan.name, plan.version, reason)
        self.registry.set_model_state(plan.task, plan.name, plan.version, ModelState.RETIRED, reason)
        return RolloutResult("rolled back" if back else "withdrawn", canary, why,
                             None if back is None else back.stored.manifest.version, interrupted)


def summary(result: RolloutResult, plan: RolloutPlan) -> dict[str, Any]:
    """The rollout's outcome as the command prints it with --json."""
    return {"task": plan.task, "name": plan.name, "version": plan.version, "group": plan.group,
            "outcome": result.outcome, "canary": result.canary, "reason": result.reason, "previous": result.previous,
            "interrupted": result.interrupted}
