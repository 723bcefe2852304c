"""Secrets a config file refers to, resolved at start-up, never during validation.

Validation stays pure (a profile validates the same on a laptop as on the
device); whether the password variable is set is checked here, when the agent
or coordinator is about to connect. Which execution providers this ONNX Runtime
build has is resolved where sessions are made (agent/session.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.config.problems import ConfigError, Problem


def password_from(password_env: str | None, password_file: str | None, at: str,
                  resolve_path: Callable[[str], Path], env: Mapping[str, str] = os.environ) -> str | None:
    """A password referenced by an environment variable or a file (path resolved by the caller's rule).

    A reference that does not resolve is an error naming ``at.password_env``/``at.password_file``,
    never an anonymous connection.
    """
    if password_env is not None:
        value = env.get(password_env)
        if value is None:
            raise ConfigError([Problem(None, f"{at}.password_env", f"environment variable {password_env} is not set")])
        return value
    if password_file is not None:
        path = resolve_path(password_file)
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError([Problem(None, f"{at}.password_file", f"cannot read {path}: {reason}")]) from None
    return None
