"""The agent's side of a rollout: follow signed releases, install them safely, report what happened.

Releases arrive (retained) on the agent's one MQTT connection; a single worker
thread handles them, so a swap never races another. Every refusal names its
reason in the log and in the heartbeat, and the running model keeps serving:
only a release that is signed, newer (or a signed rollback), intact and
passes the shadow gate replaces it.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from agent.manifest import Manifest, ManifestError
from agent.model_store import ModelStore
from agent.offload import OffloadClient
from agent.profile.schema import Profile
from agent.protocol import Topics
from agent.runtime import LocalModel
from agent.samples import SampleStore
from agent.signing import load_public_key
from agent.updates.install import (
    check_artifact,
    clean_staging,
    discard,
    promote,
    retire_newer,
    stage,
    staging_store,
)
from agent.updates.outcomes import Outcomes, State
from agent.updates.release import (
    Release,
    artifact_topic,
    check_signatures,
    parse_release,
    release_topic,
)
from agent.updates.shadow import evaluate, recent_traffic

log = logging.getLogger(__name__)

#: Test hook: when set to a path, the updater writes it after staging a release and then waits,
#: so a test can kill the agent between download and rename.
HOLD_ENV = "FEDGE_TEST_HOLD_BEFORE_PROMOTE"
OUTCOMES_FILE = "updates.json"


class ModelHost(Protocol):
    """What the updater needs of the agent."""

    device_id: str
    topics: Topics
    profile: Profile
    store: ModelStore
    samples: SampleStore | None

    def local_model(self, task: str) -> LocalModel: ...

    def replace_model(self, task: str, model: LocalModel) -> LocalModel: ...


class Refused(Exception):
    """A release this device will not apply; the message is what the heartbeat and log say."""


class Updater:
    """Subscribes to its group's releases for every task that follows the store, and applies them."""

    def __init__(self, host: ModelHost, connection: OffloadClient, state_dir: Path) -> None:
        config = host.profile.updates
        assert config.public_key_file is not None  # the profile schema insists when updates are enabled
        self.host = host
        self.config = config
        self.connection = connection
        self.key = load_public_key(host.profile.resolve_path(config.public_key_file))
        self.outcomes = Outcomes(state_dir / OUTCOMES_FILE)
        self._pending: dict[str, tuple[str, bytes]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._download: Future[bytes] | None = None
        self._topics: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="fedge-updates", daemon=True)

    def start(self) -> Updater:
        clean_staging(self.host.store)
        for task, spec in self.host.profile.models.items():
            if spec.name is None or spec.version is not None:
                log.info("task %s follows no releases: its model is %s", task,
                         "a local file" if spec.name is None else f"pinned to v{spec.version}")
                continue
            topic = release_topic(self.host.topics, task, self.config.group)
            self._topics.append(topic)
            self.connection.subscribe(topic, partial(self._on_release, task))
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        download = self._download
        if download is not None:
            download.cancel()
        for topic in self._topics:
            self.connection.unsubscribe(topic)
        if self._thread.is_alive():
            self._thread.join(10)

    # -- intake (network thread) -----------------------------------------------------------
    def _on_release(self, task: str, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # the cloud cleared its retained release
            return
        with self._cond:
            self._pending[task] = (msg.topic, bytes(msg.payload))  # only the newest release per task matters
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                task, (topic, payload) = self._pending.popitem()
            try:
                self.apply(task, topic, payload)
            except Exception as exc:
                log.exception("release for %s on %s failed", task, topic)
                self.outcomes.record(task, None, "rejected", f"failed: {exc}", "unknown", None)

    # -- one release -----------------------------------------------------------------------
    def apply(self, task: str, topic: str, payload: bytes) -> None:
        """Check and apply one release message; every outcome is logged and recorded."""
        try:
            release = parse_release(payload, topic)
            check_signatures(release, self.key)
        except ManifestError as exc:
            self._refuse(task, None, str(exc), "unknown", None)  # unverified: it may not block later releases
            return
        if not release.targets(self.host.device_id, self.config.group):
            log.debug("release on %s is for other devices of group %s", topic, release.group)
            return
        if self.outcomes.handled(task, release.issued_at):
            log.debug("release on %s (issued %s) was handled already", topic, release.issued_at)
            return
        m = release.manifest
        try:
            spec_name = self.host.profile.models[task].name
            if (m.task, m.name) != (task, spec_name):
                raise Refused(f"release on {topic} is for {m.task}/{m.name}, but this device runs {task}/{spec_name}")
            current = self.host.local_model(task)
            reason = self._install(task, release, current) if release.action == "install" \
                else self._rollback(task, release, current)
        except (Refused, ManifestError) as exc:
            self._refuse(task, m.version, str(exc), release.action, release)
            return
        if reason is None:  # stopping
            return
        self._record(task, m.version, "active", reason, release)
        log.info("%s/%s v%s serves now (%s)", task, m.name, m.version, reason)

    def _install(self, task: str, release: Release, current: LocalModel) -> str | None:
        m = release.manifest
        running = int(current.version)
        if m.version == running:  # e.g. a canary device when the release is promoted to its whole group
            return f"v{m.version} serves already"
        if m.version < running:
            raise Refused(f"{task}/{m.name} v{m.version} is older than the running v{running}: refused as a"
                          " downgrade (only a signed rollback command goes back)")
        new = self._load_staged(task, m, self._fetch(m), current)
        verdict = evaluate(current, new, recent_traffic(self.host.samples, task, self.config.gate.max_samples),
                           self.config.gate)
        log.info("shadow evaluation of %s/%s v%s: %s %s", task, m.name, m.version, verdict.reason, verdict.numbers())
        if not verdict.passed:
            new.batcher.close(drain=False)
            discard(self.host.store, m)
            raise Refused(f"v{m.version} {verdict.reason}; v{running} keeps serving")
        if not self._hold_if_asked():
            return None
        promote(self.host.store, m)
        self.host.replace_model(task, new)
        return verdict.reason

    def _rollback(self, task: str, release: Release, current: LocalModel) -> str | None:
        m = release.manifest
        running = int(current.version)
        if m.version > running:
            raise Refused(f"rollback to v{m.version}, but v{running} runs: a rollback only goes back")
        if m.version == running:
            return f"rollback to v{m.version}: already running it"
        store = self.host.store
        local = store.versions(task, m.name)
        if m.version in local and store.get(task, m.name, m.version).manifest.sha256 == m.sha256:
            model = self._load(task, m, store, current)
        else:
            model = self._load_staged(task, m, self._fetch(m), current)
            promote(store, m)
        retired = retire_newer(store, task, m.name, m.version)
        self.host.replace_model(task, model)
        return f"rolled back from v{running} by a signed command (removed v{', v'.join(map(str, retired))})"

    # -- steps -----------------------------------------------------------------------------
    def _fetch(self, m: Manifest) -> bytes:
        """The model file from its retained artifact topic, checked against the signed manifest."""
        topic = artifact_topic(self.host.topics, m.task, m.name, m.version)
        future: Future[bytes] = Future()

        def on_artifact(msg: mqtt.MQTTMessage) -> None:
            if msg.payload and future.set_running_or_notify_cancel():
                future.set_result(bytes(msg.payload))

        self._download = future
        self.connection.subscribe(topic, on_artifact)
        try:
            data = future.result(timeout=self.config.artifact_timeout_s)
        except FutureTimeout:
            raise ManifestError(f"no model file on {topic} within {self.config.artifact_timeout_s:g} s") from None
        except CancelledError:
            raise Refused("the agent is stopping") from None
        finally:
            self.connection.unsubscribe(topic)
            self._download = None
        check_artifact(m, data)
        return data

    def _load_staged(self, task: str, m: Manifest, data: bytes, current: LocalModel) -> LocalModel:
        stage(self.host.store, m, data)
        try:
            return self._load(task, m, staging_store(self.host.store), current)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime has its own error types for a model it cannot load
            discard(self.host.store, m)
            raise Refused(f"{task}/{m.name} v{m.version} does not load: {exc}") from None

    def _load(self, task: str, m: Manifest, store: ModelStore, current: LocalModel) -> LocalModel:
        spec = self.host.profile.models[task].model_copy(update={"version": m.version})
        return LocalModel.load(task, spec, self.host.profile, store, max_queue_depth=current.batcher.max_queue_depth)

    def _hold_if_asked(self) -> bool:
        """The test hook (HOLD_ENV): announce the pause and wait until stopped; False means stop now."""
        marker = os.environ.get(HOLD_ENV)
        if not marker:
            return True
        Path(marker).write_text("staged\n")
        with self._cond:
            while not self._stopping:
                self._cond.wait()
        return False

    def _refuse(self, task: str, version: int | None, reason: str, action: str, release: Release | None) -> None:
        log.warning("refused a release for %s: %s", task, reason)
        self._record(task, version, "rejected", reason, release, action)

    def _record(self, task: str, version: int | None, state: State, reason: str, release: Release | None,
                action: str | None = None) -> None:
        self.outcomes.record(task, version, state, reason, action or (release.action if release else "unknown"),
                             release.issued_at if release else None)


def heartbeat_fields(profile: Profile, updater: Updater | None) -> dict[str, Any]:
    """What a heartbeat carries for rollouts: the device's group and each task's last release outcome."""
    return {"group": profile.updates.group, "updates": updater.outcomes.report() if updater else {}}
