"""Read a profile file: YAML with positions, environment overrides, validation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from agent.profile.env_overrides import apply_env_overrides
from agent.profile.explain import explain
from agent.profile.problems import ProfileError, error_at
from agent.profile.schema import Profile
from agent.profile.yaml_source import parse_document


def load_profile(
    path: str | os.PathLike[str], env: Mapping[str, str] = os.environ
) -> Profile:
    """Load and validate the profile at `path`, with `FEDGE__*` overrides from `env`.

    Raises ProfileError listing every problem found, each at file:line:col
    (or naming the environment variable that caused it).
    """
    source = os.fspath(path)
    profile = parse_profile(read_text(source, "a profile file"), source, env)
    profile._source = Path(source).resolve()
    return profile


def parse_profile(text: str, source: str, env: Mapping[str, str] = os.environ) -> Profile:
    """Validate profile text; `source` names it in error messages."""
    document = parse_document(text, source)
    apply_env_overrides(document, env)
    try:
        return Profile.model_validate(document.data)
    except ValidationError as exc:
        raise ProfileError(explain(exc, document, Profile)) from None


def read_text(source: str, what: str) -> str:
    """A YAML file's text, or a ProfileError saying why not in words a person can act on (``what``: a noun)."""
    try:
        with open(source, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise error_at(source, "file not found") from None
    except IsADirectoryError:
        raise error_at(source, f"is a directory, not {what}") from None
    except PermissionError:
        raise error_at(source, "permission denied: this process cannot read it") from None
    except UnicodeDecodeError as exc:
        raise error_at(source, f"not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise error_at(source, f"cannot read: {exc.strerror or exc}") from None
