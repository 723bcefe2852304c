"""Names this process uses on the broker: unique per host and process."""

from __future__ import annotations

import os
import re
import socket


def instance_name() -> str:
    """``host-pid``: this process's name on the broker.

    Two coordinators (or a rollout and its retry) must never share a client id, or the broker hands
    one's session to the other and disconnects it.
    """
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', socket.gethostname())}-{os.getpid()}"


def client_id(role: str) -> str:
    """``role-host-pid``."""
    return f"{role}-{instance_name()}"
