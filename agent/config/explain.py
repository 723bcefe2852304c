"""pydantic validation errors -> problems a person can act on, at file:line:col.

pydantic reports `('hardware', 'execution_providers', 0, 'cuda', 'fp16')` and
"Extra inputs are not permitted". The user needs the line in their file, the
key path as they wrote it (union tags dropped) and what to do instead.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from agent.config.base import PATTERN_HINTS
from agent.config.introspect import TaggedUnion, field_type, is_model, unwrap
from agent.config.problems import Location, Problem
from agent.config.yaml_source import DataPath, Document, dotted_path

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "list_type": "a list",
}
_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}
_BOUND_KEYS = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}


@dataclass(frozen=True)
class _Walk:
    """An error location followed through both the data and the model types."""

    path: DataPath  # as written in the YAML: union tags dropped
    parent: type[BaseModel] | None  # the model owning the last key
    target: Any  # the (unwrapped) type expected at the end of the path
    union: TaggedUnion | None  # the last discriminated union passed through
    is_key: bool  # the error is about a mapping key, not its value


def explain(error: ValidationError, document: Document, root: type[BaseModel]) -> list[Problem]:
    """One readable Problem per pydantic error, in file order, without duplicates."""
    problems: list[Problem] = []
    for detail in error.errors(include_url=False):
        problem = _problem(detail, document, root)
        if problem not in problems:
            problems.append(problem)
    return sorted(problems, key=lambda p: p.location.sort_key() if p.location else (2, 0, 0, ""))


def _problem(detail: ErrorDetails, document: Document, root: type[BaseModel]) -> Problem:
    walk = _walk(root, detail["loc"])
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    path = walk.path
    if kind == "profile_rule":
        path = (*path, *ctx.get("at", ()))
    if kind == "union_tag_invalid" and isinstance(walk.target, TaggedUnion):
        path = (*path, walk.target.discriminator)
    if kind == "missing":
        location = _locate(document, path[:-1])
    elif kind == "extra_forbidden" or walk.is_key:
        location = document.where.key_at(path)
    else:
        location = _locate(document, path)
    return Problem(location, dotted_path(path), _message(detail, walk))


def _walk(root: type[BaseModel], loc: tuple[str | int, ...]) -> _Walk:
    current: Any = root
    path: list[str | int] = []
    parent: type[BaseModel] | None = None
    union: TaggedUnion | None = None
    is_key = False
    for element in loc:
        if isinstance(current, TaggedUnion):
            member = current.member(element)
            if member is not None:  # pydantic names the chosen member: not a YAML key
                union, current = current, member
                continue
        if element == "[key]":
            is_key = True
            continue
        if is_model(current):
            parent = current
            field = element if isinstance(element, str) and element in current.model_fields else None
            current = field_type(current, field) if field is not None else None
        elif get_origin(current) is list:
            current = unwrap(get_args(current)[0])
        elif get_origin(current) is dict:
            current = unwrap(get_args(current)[1])
        else:
            current = None
        path.append(element)
    return _Walk(tuple(path), parent, current, union, is_key)


def _locate(document: Document, path: DataPath) -> Location | None:
    """The key line for sections and missing keys, the value itself for scalars."""
    node: Any = document.data
    found: DataPath = ()
    for part in path:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_dict or in_list):
            return document.where.key_at(found)
        node = node[part]
        found = (*found, part)
    if isinstance(node, (dict, list)):
        return document.where.key_at(found)
    return document.where.value_at(found)


def _message(detail: ErrorDetails, walk: _Walk) -> str:
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    value = detail["input"]
    target = walk.target
    if kind == "extra_forbidden":
        return _unknown_key(str(detail["loc"][-1]), walk)
    if kind == "missing":
        return "missing required key"
    if kind == "union_tag_invalid" and isinstance(target, TaggedUnion):
        tag = str(ctx.get("tag", value))
        return (
            f"unknown {target.noun} {tag!r}{_did_you_mean(tag, target.tags())};"
            f" known: {', '.join(target.tags())}"
        )
    if kind == "union_tag_not_found" and isinstance(target, TaggedUnion):
        return (
            f"missing '{target.discriminator}': say which {target.noun} this is,"
            f" one of: {', '.join(target.tags())}"
        )
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
        if isinstance(target, TaggedUnion):
            example = value if value in target.tags() else target.tags()[-1]
            expected = f"a mapping like {{{target.discriminator}: {example}}}"
        return f"wrong type: expected {expected}, got {_describe(value)}"
    if kind == "literal_error" and get_origin(target) is Literal:
        allowed = [str(option) for option in get_args(target)]
        return (
            f"{_show(value)} is not allowed{_did_you_mean(str(value), allowed)};"
            f" use one of: {', '.join(allowed)}"
        )
    if kind in _BOUNDS:
        op = _BOUNDS[kind]
        bound = ctx[_BOUND_KEYS[op]]
        return f"{_show(value)} is out of range: must be {op} {_show(bound)}"
    if kind == "too_short":
        wanted = ctx["min_length"]
        entries = "entry" if wanted == 1 else "entries"
        return f"needs at least {wanted} {entries}, got {ctx['actual_length']}"
    if kind == "too_long":
        return f"has {ctx['actual_length']} entries; at most {ctx['max_length']} are allowed"
    if kind == "string_pattern_mismatch":
        what = "is not a valid key" if walk.is_key else "is not valid"
        hint = PATTERN_HINTS.get(str(ctx["pattern"]), f"it must match {ctx['pattern']}")
        return f"{_show(value)} {what}: {hint}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"is too long: at most {ctx['max_length']} characters"
    if kind == "value_error":
        return detail["msg"].removeprefix("Value error, ")
    return detail["msg"]


def _unknown_key(key: str, walk: _Walk) -> str:
    parent = walk.parent
    if parent is None:
        return "unknown key"
    hint = getattr(parent, "unknown_key_hints", {}).get(key.lower())
    if hint is not None:
        return hint
    valid = list(parent.model_fields)
    if walk.union is not None and parent in walk.union.members:
        owners = [
            str(getattr(m.model_fields[walk.union.discriminator], "default", ""))
            for m in walk.union.members
            if m is not parent and key in m.model_fields
        ]
        if owners:
            this = parent.model_fields[walk.union.discriminator].default
            return (
                f"unknown key for {walk.union.noun} {this!r}: it is an option of"
                f" {', '.join(repr(o) for o in owners)}; valid here: {', '.join(valid)}"
            )
    suggestion = _did_you_mean(key, valid)
    if suggestion:
        return f"unknown key{suggestion}"
    return f"unknown key; valid keys here: {', '.join(valid)}"


def _did_you_mean(word: str, choices: list[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, ignoring case; empty if none is close."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def _show(value: Any) -> str:
    """A value as it would look in YAML, shortened."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(value: Any) -> str:
    """A value with its YAML kind, for wrong-type messages."""
    if value is None:
        return "an empty value"
    if isinstance(value, (dict, list)):
        return _show(value)
    kinds = {bool: "boolean", int: "number", float: "number", str: "text"}
    return f"{kinds.get(type(value), type(value).__name__)} {_show(value)}"
