"""Read a device profile file: YAML with positions, ``FEDGE__*`` environment overrides, validation."""

from __future__ import annotations

import os
from collections.abc import Mapping

from agent.config.loader import load_model, parse_model
from agent.config.yaml_source import DocumentKind
from agent.profile.schema import Profile

PROFILE = DocumentKind("device profile", "device, models, ...", "a profile needs at least device and models")


def load_profile(path: str | os.PathLike[str], env: Mapping[str, str] = os.environ) -> Profile:
    """Load and validate the profile at `path`, with `FEDGE__*` overrides from `env`.

    Raises ConfigError listing every problem found, each at file:line:col
    (or naming the environment variable that caused it).
    """
    return load_model(path, Profile, PROFILE, env)


def parse_profile(text: str, source: str, env: Mapping[str, str] = os.environ) -> Profile:
    """Validate profile text; `source` names it in error messages."""
    return parse_model(text, source, Profile, PROFILE, env)
