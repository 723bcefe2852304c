"""Runtime facts a profile refers to, resolved at start-up, never during validation.

Validation stays pure (a profile validates the same on a laptop as on the
device); whether the password variable is set is checked here, when the agent
is about to connect. Which execution providers this ONNX Runtime build has is
resolved where sessions are made (agent/session.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.profile.problems import Problem, ProfileError
from agent.profile.schema import Profile


def resolve_password(profile: Profile, env: Mapping[str, str] = os.environ) -> str | None:
    """The MQTT password from `broker.password_env` or `broker.password_file`, if any."""
    broker = profile.broker
    return password_from(broker.password_env, broker.password_file, "broker", profile.resolve_path, env)


def password_from(password_env: str | None, password_file: str | None, at: str,
                  resolve_path: Callable[[str], Path], env: Mapping[str, str] = os.environ) -> str | None:
    """A password referenced by an environment variable or a file (path resolved by the caller's rule).

    A reference that does not resolve is an error naming ``at.password_env``/``at.password_file``,
    never an anonymous connection. The cloud's serve config shares this with device profiles.
    """
    if password_env is not None:
        value = env.get(password_env)
        if value is None:
            raise ProfileError([Problem(None, f"{at}.password_env", f"environment variable {password_env} is not set")])
        return value
    if password_file is not None:
        path = resolve_path(password_file)
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ProfileError([Problem(None, f"{at}.password_file", f"cannot read {path}: {reason}")]) from None
    return None
