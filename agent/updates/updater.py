"""The agent's side of a rollout: follow signed releases, install them safely, report what happened.

Releases arrive (retained) on the agent's one MQTT connection; a single worker
thread handles them, so a swap never races another. Every refusal names its
reason in the log and in the heartbeat, and the running model keeps serving:
only a release that is signed, newer (or a signed rollback), intact and
passes the shadow gate replaces it. A release cut short (the agent stops, the
model file does not come, the local queue is full) is not a decision: it is
tried again after ``updates.retry_after_s`` and on the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from agent.manifest import Manifest, ManifestError
from agent.model_store import ModelStore
from agent.profile.schema import Profile
from agent.protocol import Topics
from agent.runtime import LocalModel
from agent.samples import SampleStore
from agent.signing import load_public_key
from agent.updates.artifact import ArtifactWait
from agent.updates.install import (
    clean_staging,
    discard,
    promote,
    retire_newer,
    stage,
    staging_store,
)
from agent.updates.outcomes import Outcomes
from agent.updates.release import (
    Release,
    check_manifest_signature,
    check_release_signature,
    parse_release,
)
from agent.updates.shadow import NotJudged, Verdict, evaluate, recent_traffic
from agent.uplink import Uplink

log = logging.getLogger(__name__)

#: Test hook: when this environment variable is non-empty, the updater pauses after a release is
#: staged and judged, before it is promoted, until the agent stops; so a test can kill -9 the agent
#: mid-swap. It only waits: it writes nothing and the pause ends with a stop. Logged when active.
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
    """A verified release this device will not apply; the message is what the heartbeat and log say."""


class Deferred(Exception):
    """A verified release that could not be finished now (stop, no file, busy); it is tried again."""


class Updater:
    """Subscribes to its group's releases for every task that follows the store, and applies them."""

    def __init__(self, host: ModelHost, state_dir: Path) -> None:
        """Read the key and the record of past releases; KeyFileError names a bad key file."""
        config = host.profile.updates
        assert config.public_key_file is not None  # the profile schema insists when updates are enabled
        self.host = host
        self.config = config
        self.key = load_public_key(host.profile.resolve_path(config.public_key_file))
        self.outcomes = Outcomes(state_dir / OUTCOMES_FILE)
        self.connection: Uplink | None = None
        self._pending: dict[str, tuple[str, bytes]] = {}
        self._retries: dict[str, tuple[float, str, bytes]] = {}
        self._cond = threading.Condition()
        self._swap_lock = threading.Lock()
        self._stopping = False
        self._download: ArtifactWait | None = None
        self._topics: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="fedge-updates", daemon=True)

    def start(self, connection: Uplink) -> Updater:
        self.connection = connection
        clean_staging(self.host.store)
        for task, spec in self.host.profile.models.items():
            if spec.name is None or spec.version is not None:
                log.info("task %s follows no releases: its model is %s", task,
                         "a local file" if spec.name is None else f"pinned to v{spec.version}")
                continue
            topic = self.host.topics.release(task, self.config.group)
            self._topics.append(topic)
            connection.subscribe(topic, partial(self._on_release, task))
        self._thread.start()
        return self

    def stop(self) -> None:
        """After this returns no model is swapped in: a swap under way has finished, later ones never start."""
        with self._cond:
            self._stopping = True
            download = self._download
            self._cond.notify_all()
        if download is not None:
            download.cancel()
        with self._swap_lock:
            pass
        if self.connection is not None:
            for topic in self._topics:
                self.connection.unsubscribe(topic)
        if self._thread.is_alive():
            self._thread.join(10)

    def heartbeat(self) -> dict[str, Any]:
        """What a heartbeat carries for rollouts: each task's last verified release outcome, and notes."""
        return {"updates": self.outcomes.report(), **self.outcomes.notes()}

    # -- intake (network thread) -----------------------------------------------------------
    def _on_release(self, task: str, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # the cloud cleared its retained release
            return
        with self._cond:
            self._pending[task] = (msg.topic, bytes(msg.payload))  # only the newest release per task matters
            self._retries.pop(task, None)
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._take_due_retries():
                    due = min((at for at, _, _ in self._retries.values()), default=None)
                    self._cond.wait(None if due is None else max(0.0, due - time.monotonic()))
                if self._stopping:
                    return
                task, (topic, payload) = self._pending.popitem()
            try:
                self.apply(task, topic, payload)
            except Deferred:
                with self._cond:
                    if task not in self._pending:  # a newer release that arrived meanwhile wins
                        self._retries[task] = (time.monotonic() + self.config.retry_after_s, topic, payload)
            except Exception:  # a bug must not end the thread: later releases still get their turn
                log.exception("release for %s on %s could not be handled", task, topic)

    def _take_due_retries(self) -> bool:
        """Move retries whose time has come to the pending releases (lock held); True when work is pending."""
        now = time.monotonic()
        for task, (at, topic, payload) in list(self._retries.items()):
            if at <= now:
                del self._retries[task]
                self._pending.setdefault(task, (topic, payload))
        return bool(self._pending)

    # -- one release -----------------------------------------------------------------------
    def apply(self, task: str, topic: str, payload: bytes) -> None:
        """Check and apply one release message; every outcome is logged and recorded. Deferred: try again."""
        release = None
        try:
            release = parse_release(payload, topic)
            check_release_signature(release, self.key)
        except ManifestError as exc:  # not from the cloud's key: it may neither block nor overwrite anything
            log.warning("ignored a release message for %s that does not verify: %s", task, exc)
            self.outcomes.unverified(task, str(exc), release)
            return
        if not release.targets(self.host.device_id, self.config.group):
            log.debug("release on %s is for other devices of group %s", topic, release.group)
            return
        m = release.manifest
        if self.outcomes.handled(task, release.issued_at):
            log.info("ignored the release of %s v%s on %s (issued %s): handled already or older than one that was",
                     task, m.version, topic, release.issued_at)
            return
        try:
            reason = self._apply(task, topic, release)
        except (Refused, ManifestError) as exc:
            log.warning("refused a release for %s: %s", task, exc)
            self.outcomes.record(task, m.version, "rejected", str(exc), release.action, release.issued_at)
            return
        except Deferred as exc:
            self._defer(task, release, str(exc))
            raise
        except Exception as exc:
            log.exception("the release of %s v%s failed; it is tried again", task, m.version)
            self._defer(task, release, f"failed: {exc}")
            raise Deferred(str(exc)) from exc
        self.outcomes.record(task, m.version, "active", reason, release.action, release.issued_at)
        log.info("%s/%s v%s serves now (%s)", task, m.name, m.version, reason)

    def _defer(self, task: str, release: Release, reason: str) -> None:
        if not self._stopping:
            log.warning("release of %s v%s not finished: %s; tried again in %g s", task,
                        release.manifest.version, reason, self.config.retry_after_s)
        self.outcomes.retrying(task, release.manifest.version, reason, release.issued_at)

    def _apply(self, task: str, topic: str, release: Release) -> str:
        m = release.manifest
        spec_name = self.host.profile.models[task].name
        if (m.task, m.name) != (task, spec_name):
            raise Refused(f"release on {topic} is for {m.task}/{m.name}, but this device runs {task}/{spec_name}")
        check_manifest_signature(release, self.key)
        current = self.host.local_model(task)
        return self._install(task, release, current) if release.action == "install" \
            else self._rollback(task, release, current)

    def _install(self, task: str, release: Release, current: LocalModel) -> str:
        m = release.manifest
        running = int(current.version)
        if m.version == running:  # e.g. a canary device when the release is promoted to its whole group
            return f"v{m.version} serves already"
        if m.version < running:
            raise Refused(f"{task}/{m.name} v{m.version} is older than the running v{running}: refused as a"
                          " downgrade (only a signed rollback command goes back)")
        new = self._load_staged(task, m, self._fetch(m), current)
        try:
            verdict = self._judge(task, m, current, new)
            if not verdict.passed:
                raise Refused(f"v{m.version} {verdict.reason}; v{running} keeps serving")
            self._swap(task, new, lambda: promote(self.host.store, m))
        except BaseException:
            new.batcher.close(drain=False)
            discard(self.host.store, m)
            raise
        return verdict.reason

    def _rollback(self, task: str, release: Release, current: LocalModel) -> str:
        m = release.manifest
        running = int(current.version)
        if m.version > running:
            raise Refused(f"rollback to v{m.version}, but v{running} runs: a rollback only goes back")
        if m.version == running:
            return f"rollback to v{m.version}: already running it"
        if self.outcomes.unknown(task):
            raise Refused(f"rollback to v{m.version} refused: the record of handled releases was lost"
                          f" ({self.outcomes.damaged}), so a replayed old command cannot be told from a new one")
        store = self.host.store
        local = m.version in store.versions(task, m.name) and \
            store.get(task, m.name, m.version).manifest.sha256 == m.sha256
        model = self._load(task, m, store, current) if local else \
            self._load_staged(task, m, self._fetch(m), current)
        retired: list[int] = []

        def into_store() -> None:
            if not local:
                promote(store, m)
            retired.extend(retire_newer(store, task, m.name, m.version))

        try:
            self._swap(task, model, into_store)
        except BaseException:
            model.batcher.close(drain=False)
            if not local:
                discard(store, m)
            raise
        return f"rolled back from v{running} by a signed command (removed v{', v'.join(map(str, retired))})"

    # -- steps -----------------------------------------------------------------------------
    def _fetch(self, m: Manifest) -> bytes:
        """The model file from its retained artifact topic (``stage`` checks it against the manifest)."""
        assert self.connection is not None
        wait = ArtifactWait(self.host.topics.artifact(m.task, m.name, m.version))
        with self._cond:
            if self._stopping:
                raise Deferred("the agent is stopping")
            self._download = wait
        self.connection.subscribe(wait.topic, wait.deliver)
        try:
            return wait.result(timeout=self.config.artifact_timeout_s)
        except TimeoutError:
            raise Deferred(f"no model file on {wait.topic} within {self.config.artifact_timeout_s:g} s") from None
        except CancelledError:
            raise Deferred("the agent is stopping") from None
        finally:
            self.connection.unsubscribe(wait.topic)
            self._download = None

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

    def _judge(self, task: str, m: Manifest, current: LocalModel, new: LocalModel) -> Verdict:
        traffic = recent_traffic(self.host.samples, task, self.config.gate.max_samples)
        try:
            verdict = evaluate(current, new, traffic, self.config.gate)
        except NotJudged as exc:
            raise Deferred(f"v{m.version} not shadow-evaluated: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever the new model does on real inputs, it does not serve
            raise Refused(f"v{m.version} fails on recent traffic: {exc}") from None
        log.info("shadow evaluation of %s/%s v%s: %s %s", task, m.name, m.version, verdict.reason, verdict.numbers())
        return verdict

    def _swap(self, task: str, model: LocalModel, into_store: Callable[[], object]) -> None:
        """Put the new version in the store and in service, unless the agent is stopping (see ``stop``)."""
        with self._swap_lock:
            if self._stopping:
                raise Deferred("the agent is stopping")
            into_store()
            self.host.replace_model(task, model)
