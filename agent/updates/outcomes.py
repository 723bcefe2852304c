"""What became of each task's last release, kept on disk so a restart neither repeats nor forgets it.

The heartbeat reports it (the cloud's rollout reads it to judge a canary), and
the time of the last signed release decided makes a replayed or re-delivered
retained release a no-op. Only decisions about a verified release's content
(signature, file, version, gate) carry its ``issued_at``: a release cut short
(stop, missing file, busy queue) is tried again, and a message that does not
verify goes to a separate field, so it can neither block a release nor change
the outcome a verified one reported.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from agent.durable import replace_file
from agent.updates.release import Release

log = logging.getLogger(__name__)

State = Literal["active", "rejected"]


class Outcomes:
    """Per task: the last verified release's outcome, plus the last unverified and the last retried one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damaged = path.with_name(path.name + ".corrupt")
        self._lock = threading.Lock()
        self._lost = False
        self._doc: dict[str, dict[str, Any]] = self._read()
        self._unverified: dict[str, dict[str, Any]] = {}
        self._retrying: dict[str, dict[str, Any]] = {}

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            loaded = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            loaded = exc
        if isinstance(loaded, dict) and all(isinstance(v, dict) for v in loaded.values()):
            return loaded
        # Starting from nothing would let an old signed rollback replay; keep the evidence and stay wary.
        self._lost = True
        try:
            self.path.replace(self.damaged)
        except OSError as exc:
            log.error("could not move %s aside: %s", self.path, exc)
        log.error("%s is unreadable (%s); moved to %s. Until a task handles a new release, releases that"
                  " do not move it forward are refused; delete %s once that is fine", self.path,
                  loaded if isinstance(loaded, Exception) else "not a JSON object of tasks", self.damaged,
                  self.damaged)
        return {}

    def handled(self, task: str, issued_at: datetime) -> bool:
        """A signed release at or before the last one decided for ``task``: seen already, or replayed."""
        with self._lock:
            last = self._doc.get(task, {}).get("issued_at")
        return last is not None and datetime.fromisoformat(last) >= issued_at

    def unknown(self, task: str) -> bool:
        """The record was lost (damaged file) and ``task`` has decided nothing since: replays cannot be told."""
        with self._lock:
            return task not in self._doc and (self._lost or self.damaged.exists())

    def record(self, task: str, version: int, state: State, reason: str, action: str, issued_at: datetime) -> None:
        """Remember the decision on a verified release's content; it is not applied again."""
        with self._lock:
            self._doc[task] = {"version": version, "state": state, "reason": reason, "action": action,
                               "at": time.time(), "issued_at": issued_at.isoformat()}
            self._retrying.pop(task, None)
            self._save()

    def unverified(self, task: str, reason: str, claimed: Release | None = None) -> None:
        """A release message that does not verify: reported, but it decides nothing here.

        ``claimed``: the message, where it parsed. Its version and ``issued_at`` are reported as
        claims, so a rollout whose canary cannot verify its release (signed with another key) hears
        of it at once; a claim can only fail a rollout, never pass one.
        """
        entry: dict[str, Any] = {"reason": reason, "at": time.time()}
        if claimed is not None:
            entry |= {"version": claimed.manifest.version, "issued_at": claimed.issued_at.isoformat()}
        with self._lock:
            self._unverified[task] = entry

    def retrying(self, task: str, version: int, reason: str, issued_at: datetime) -> None:
        """A verified release cut short (stop, missing file, busy): reported, and applied again later."""
        with self._lock:
            self._retrying[task] = {"version": version, "reason": reason, "at": time.time(),
                                    "issued_at": issued_at.isoformat()}

    def report(self) -> dict[str, dict[str, Any]]:
        """The heartbeat's ``updates`` field; ``issued_at`` names the release an outcome belongs to."""
        with self._lock:
            return {task: dict(entry) for task, entry in self._doc.items()}

    def notes(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The heartbeat's ``last_unverified`` and ``last_retrying`` fields (since this start)."""
        with self._lock:
            return {"last_unverified": {t: dict(e) for t, e in self._unverified.items()},
                    "last_retrying": {t: dict(e) for t, e in self._retrying.items()}}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(self.path, json.dumps(self._doc, indent=2).encode())
