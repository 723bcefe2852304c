"""`FEDGE__SECTION__KEY=value` environment overrides, applied before validation.

Containers and systemd units change a setting or two (the broker host, the
device id) without editing the profile. Overrides go into the data before
validation, so a bad value fails like a bad line in the file, but is reported
against the variable that set it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from agent.config.problems import ConfigError, Location, Problem
from agent.config.yaml_source import DataPath, Document, dotted_path

ENV_PREFIX = "FEDGE__"
SEPARATOR = "__"


def env_location(name: str) -> Location:
    """How an environment variable is named in error messages."""
    return Location(f"environment variable {name}")


def apply_env_overrides(document: Document, env: Mapping[str, str]) -> None:
    """Set every `FEDGE__A__B=value` as `a.b` in the document, in name order.

    Keys are case-insensitive (matched to the file's spelling when present,
    lowercase otherwise); values are parsed as YAML, so `8883` is a number and
    `[{type: cpu}]` a list. Problems are collected and raised together.
    """
    problems: list[Problem] = []
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        try:
            _apply_one(document, name, env[name])
        except _OverrideError as exc:
            problems.append(Problem(env_location(name), exc.path, exc.message))
    if problems:
        raise ConfigError(problems)


class _OverrideError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _apply_one(document: Document, name: str, raw: str) -> None:
    segments = name[len(ENV_PREFIX) :].split(SEPARATOR)
    if not all(segments):
        raise _OverrideError(
            "", f"empty key in the name: separate keys with exactly '{SEPARATOR}'"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise _OverrideError("", f"value {raw!r} is not valid YAML: {problem}") from None
    node: Any = document.data
    path: DataPath = ()
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if isinstance(node, dict):
            key = next((k for k in node if k.lower() == segment.lower()), segment.lower())
            path = (*path, key)
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = {}
                    document.where.replace(path, env_location(name))
                node = node[key]
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            index = int(segment)
            path = (*path, index)
            if last:
                node[index] = value
            else:
                node = node[index]
        else:
            shown = dotted_path(path)
            if isinstance(node, list):
                raise _OverrideError(
                    shown, f"is a list of {len(node)}: use an index from 0 to {len(node) - 1}"
                )
            raise _OverrideError(shown, f"is {_kind(node)}, so it has no key '{segment.lower()}'")
    document.where.replace(path, env_location(name))


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    return {bool: "a boolean", int: "a number", float: "a number", str: "text"}.get(
        type(value), type(value).__name__
    )
