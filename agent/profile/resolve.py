"""Runtime facts a profile refers to, resolved at start-up, never during validation.

Validation stays pure (a profile validates the same on a laptop as on the
device); whether the password variable is set is checked here, when the agent
is about to connect. Which execution providers this ONNX Runtime build has is
resolved where sessions are made (agent/session.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from agent.profile.problems import Problem, ProfileError
from agent.profile.schema import Profile


def resolve_password(profile: Profile, env: Mapping[str, str] = os.environ) -> str | None:
    """The MQTT password from `broker.password_env` or `broker.password_file`, if any.

    A reference that does not resolve is an error, not an anonymous connection.
    """
    broker = profile.broker
    if broker.password_env is not None:
        value = env.get(broker.password_env)
        if value is None:
            raise _broker_error(
                "password_env", f"environment variable {broker.password_env} is not set"
            )
        return value
    if broker.password_file is not None:
        path = profile.resolve_path(broker.password_file)
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise _broker_error("password_file", f"cannot read {path}: {reason}") from None
    return None


def _broker_error(key: str, message: str) -> ProfileError:
    return ProfileError([Problem(None, f"broker.{key}", message)])
