"""What became of each task's last release, kept on disk so a restart neither repeats nor forgets it.

The heartbeat reports it (the cloud's rollout reads it to judge a canary), and
the time of the last signed release handled makes a replayed or re-delivered
retained release a no-op.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

State = Literal["active", "rejected"]


class Outcomes:
    """Per task: version, state (active/rejected), reason, action, and the last signed release's time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            loaded = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            loaded = {}
        self._doc: dict[str, dict[str, Any]] = loaded if isinstance(loaded, dict) else {}

    def handled(self, task: str, issued_at: datetime) -> bool:
        """A signed release at or before the last one handled for ``task``: seen already, or replayed."""
        with self._lock:
            last = self._doc.get(task, {}).get("issued_at")
        return last is not None and datetime.fromisoformat(last) >= issued_at

    def record(self, task: str, version: int | None, state: State, reason: str, action: str,
               issued_at: datetime | None) -> None:
        """Remember an outcome; ``issued_at`` only for signed releases (an unverified one may not block others)."""
        with self._lock:
            entry = {"version": version, "state": state, "reason": reason, "action": action, "at": time.time(),
                     "issued_at": issued_at.isoformat() if issued_at else self._doc.get(task, {}).get("issued_at")}
            self._doc[task] = entry
            self._save()

    def report(self) -> dict[str, dict[str, Any]]:
        """The heartbeat's ``updates`` field; ``issued_at`` names the release an outcome belongs to."""
        with self._lock:
            return {task: dict(entry) for task, entry in self._doc.items()}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        with temp.open("w") as f:
            json.dump(self._doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        temp.replace(self.path)
