"""Runtime facts a profile refers to, resolved at start-up, never during validation.

Validation stays pure (a profile validates the same on a laptop as on the
device); whether this ONNX Runtime build has CUDA, or the password variable is
set, is checked here, when the agent is about to use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.profile.hardware import HardwareConfig
from agent.profile.problems import Problem, ProfileError
from agent.profile.schema import Profile


@dataclass(frozen=True)
class ProviderChoice:
    """The configured providers this ONNX Runtime build has, and the ones it lacks."""

    providers: list[tuple[str, dict[str, str]]]
    missing: list[str]


def choose_providers(hardware: HardwareConfig, available: Sequence[str]) -> ProviderChoice:
    """Keep the configured providers that `available` (ORT's list) contains, in order.

    Raises ProfileError when none is left: running on no provider is not a fallback.
    """
    chosen = [(name, options) for name, options in hardware.ort_providers() if name in available]
    missing = [name for name, _ in hardware.ort_providers() if name not in available]
    if not chosen:
        raise ProfileError([
            Problem(
                None,
                "hardware.execution_providers",
                f"none of the configured providers ({', '.join(missing)}) is in this ONNX"
                f" Runtime build, which has: {', '.join(available)}; add {{type: cpu}} as"
                " the last entry",
            )
        ])
    return ProviderChoice(chosen, missing)


def ort_available_providers() -> list[str]:
    """The execution providers of the installed ONNX Runtime (imported only when asked)."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


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
