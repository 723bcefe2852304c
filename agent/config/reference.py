"""A config reference in Markdown (docs/PROFILES.md), generated from a schema's descriptions.

Generated, so the reference cannot drift from the code: a test fails when the
committed file differs from what this prints. Update the profile reference with
`fedge-agent schema --reference docs/PROFILES.md`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agent.config.base import PATTERN_HINTS
from agent.config.introspect import TaggedUnion, field_type, is_model, is_optional, unwrap

BEGIN = "<!-- BEGIN GENERATED REFERENCE: fedge-agent schema --reference docs/PROFILES.md -->"
END = "<!-- END GENERATED REFERENCE -->"
_TYPE_NAMES = {int: "integer", float: "number", bool: "boolean", str: "text"}
_BOUND_WORDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def render_reference(root: type[BaseModel]) -> str:
    """Markdown for every section and key of ``root``, in schema order."""
    blocks = ["## Top level\n", f"{_one_line(root.__doc__ or '')}\n", *_table(root), ""]
    seen: set[str] = set()
    for name in root.model_fields:
        blocks.extend(_sections(name, field_type(root, name), seen))
    return "\n".join(blocks)


def _sections(path: str, target: Any, seen: set[str]) -> Iterator[str]:
    """A heading and table per model reachable at `path` (members of unions each get one)."""
    if isinstance(target, TaggedUnion):
        for member in target.members:
            tag = member.model_fields[target.discriminator].default
            yield from _model_section(path, f" ({target.discriminator}: {tag})", member, seen)
    elif is_model(target):
        yield from _model_section(path, "", target, seen)
    elif get_origin(target) is list:
        yield from _sections(f"{path}[]", unwrap(get_args(target)[0]), seen)
    elif get_origin(target) is dict:
        yield from _sections(f"{path}.<task>", unwrap(get_args(target)[1]), seen)


def _model_section(
    path: str, variant: str, model: type[BaseModel], seen: set[str]
) -> Iterator[str]:
    """Heading, docstring and key table of one model, then its nested sections."""
    title = f"{path}{variant}"
    if title in seen:  # e.g. fusion, shared by both offload modes
        return
    seen.add(title)
    level = "#" * min(2 + path.count("."), 4)
    yield f"{level} `{title}`\n"
    yield f"{_one_line(model.__doc__ or '')}\n"
    yield from _table(model)
    yield ""
    for name in model.model_fields:
        yield from _sections(f"{path}.{name}", field_type(model, name), seen)


def _table(model: type[BaseModel]) -> Iterator[str]:
    yield "| key | type | default | description |"
    yield "|---|---|---|---|"
    for name, info in model.model_fields.items():
        yield (
            f"| `{name}` | {_type_text(field_type(model, name), info)} | {_default_text(info)}"
            f" | {_description(info)} |"
        )


def _type_text(target: Any, info: FieldInfo) -> str:
    text = _base_type(target)
    bounds = [
        f"{word} {getattr(meta, key)}"
        for meta in info.metadata
        for key, word in _BOUND_WORDS
        if hasattr(meta, key)
    ]
    if bounds:
        text += f" ({', '.join(bounds)})"
    if is_optional(info.annotation):
        text += " or null"
    return text


def _base_type(target: Any) -> str:
    if isinstance(target, TaggedUnion):
        return f"{target.noun} ({target.discriminator}: {', '.join(target.tags())})"
    if is_model(target):
        return "mapping"
    if get_origin(target) is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(target))
    if get_origin(target) is list:
        return f"list of {_base_type(unwrap(get_args(target)[0]))}"
    if get_origin(target) is dict:
        value = unwrap(get_args(target)[1])
        return f"mapping of task name to {'settings' if is_model(value) else _base_type(value)}"
    return _TYPE_NAMES.get(target, str(target))


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _description(info: FieldInfo) -> str:
    text = _one_line(info.description or "")
    label = "Task names" if get_origin(unwrap(info.annotation)) is dict else "Format"
    for pattern in _patterns(info):
        hint = PATTERN_HINTS.get(pattern)
        if hint:
            text += f" {label}: {hint}."
    return text.replace("|", "\\|")


def _patterns(info: FieldInfo) -> list[str]:
    """Regex constraints on the field, wherever pydantic keeps them."""
    found = [m.pattern for m in info.metadata if getattr(m, "pattern", None)]
    stack = [info.annotation]
    while stack:
        current = stack.pop()
        for arg in get_args(current):
            if getattr(arg, "pattern", None):
                found.append(arg.pattern)
            stack.append(arg)
    return found


def _one_line(text: str) -> str:
    return " ".join(text.split())


def update(path: Path, root: type[BaseModel], check: bool) -> bool:
    """Rewrite the generated block in `path` with ``root``'s reference; False only when `check` finds it stale.

    With `check` nothing is written, so CI can tell a stale reference apart.
    """
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
        raise ValueError(f"no generated block: the file needs the lines {BEGIN} and, after it, {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    fresh = f"{head}{BEGIN}\n\n{render_reference(root)}\n{END}{tail}"
    if fresh == text:
        return True
    if not check:
        path.write_text(fresh, encoding="utf-8")
    return not check
