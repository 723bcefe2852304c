"""YAML to plain data, remembering where every key and value was written.

PyYAML's `safe_load` drops positions; validation errors need them to say
`file:line:col`. So the file is composed to nodes and built here, recording
each node's mark under its path in the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agent.config.problems import ConfigError, Location, Problem, error_at

DataPath = tuple[str | int, ...]
MAX_NODES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class SourceMap:
    """Locations of values and of mapping keys, by data path."""

    values: dict[DataPath, Location] = field(default_factory=dict)
    keys: dict[DataPath, Location] = field(default_factory=dict)

    def value_at(self, path: DataPath) -> Location | None:
        """Where the value at `path` was written, or its nearest written ancestor."""
        for end in range(len(path), -1, -1):
            location = self.values.get(path[:end])
            if location is not None:
                return location
        return None

    def key_at(self, path: DataPath) -> Location | None:
        """Where the key naming `path` was written (falls back to the value)."""
        return self.keys.get(path) or self.value_at(path)

    def replace(self, path: DataPath, location: Location) -> None:
        """Record that `path` (and all below it) now comes from `location`."""
        for table in (self.values, self.keys):
            for known in [p for p in table if p[: len(path)] == path]:
                del table[known]
            table[path] = location


@dataclass(frozen=True)
class DocumentKind:
    """What a YAML file is meant to be, so its errors name that and not a device profile."""

    noun: str  # "device profile"
    sections: str  # examples of its top-level keys, for "a ... is a mapping of sections (...)"
    empty_problem: str | None  # why an empty file is refused; None: an empty file means every default


@dataclass
class Document:
    """A parsed YAML document: plain data plus where each part of it came from."""

    data: dict[str, Any]
    where: SourceMap


def _location(source: str, node: Node) -> Location:
    mark = node.start_mark
    return Location(source, mark.line + 1, mark.column + 1)


class _Builder:
    """Turns a composed node tree into dicts/lists/scalars, recording locations."""

    def __init__(self, source: str, kind: DocumentKind) -> None:
        self.source = source
        self.kind = kind
        self.where = SourceMap()
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()
        self._active: set[int] = set()
        self._built = 0

    def build(self, node: Node, path: DataPath) -> Any:
        self._built += 1
        if self._built > MAX_NODES:  # aliases can expand a small file exponentially
            raise error_at(self.source, f"more than {MAX_NODES} values: not a {self.kind.noun}")
        self.where.values[path] = _location(self.source, node)
        if id(node) in self._active:  # an alias inside itself: `a: &x [*x]`
            self._problem(node, path, "recursive YAML alias")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self._constructor.construct_object(node, deep=True)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, path: DataPath) -> dict[str, Any]:
        self._check_keys(node, path)
        self._constructor.flatten_mapping(node)  # `<<: *limits` merges come first
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:  # so the mapping's own keys override them
            key = self._key(key_node)
            if isinstance(key, str):
                key_path = (*path, key)
                self.where.keys[key_path] = _location(self.source, key_node)
                result[key] = self.build(value_node, key_path)
        return result

    def _check_keys(self, node: MappingNode, path: DataPath) -> None:
        """Keys are text and written once (YAML would silently keep the last one)."""
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self._key(key_node)
            if not isinstance(key, str):
                self._problem(key_node, path, f"key {key_node.value!r} must be text: quote it")
            elif key in first_line:
                self._problem(
                    key_node,
                    (*path, key),
                    f"duplicate key (first written at line {first_line[key]}): keep one",
                )
            else:
                first_line[key] = key_node.start_mark.line + 1

    def _key(self, node: Node) -> Any:
        return self._constructor.construct_object(node) if isinstance(node, ScalarNode) else None

    def _problem(self, node: Node, path: DataPath, message: str) -> None:
        self.problems.append(Problem(_location(self.source, node), dotted_path(path), message))


def dotted_path(path: DataPath) -> str:
    """`('hardware', 'execution_providers', 0)` -> `hardware.execution_providers[0]`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _syntax_error(source: str, exc: yaml.MarkedYAMLError) -> ConfigError:
    """Point at the problem; name where the unfinished construct began, if elsewhere."""
    mark = exc.problem_mark or exc.context_mark
    reason = str(exc.problem or exc.context or "unreadable YAML")
    start = exc.context_mark
    if exc.context and reason.startswith("but "):  # "expected X" / "but found Y"
        reason = f"{exc.context}, {reason}"
    elif exc.context and exc.problem and start is not None and start is not mark:
        reason += f" ({exc.context} started at line {start.line + 1}, column {start.column + 1})"
    if "\\t" in reason:
        reason += ": indent with spaces, not tabs"
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return error_at(source, f"YAML syntax error: {reason}", line, column)


def parse_document(text: str, source: str, kind: DocumentKind) -> Document:
    """Parse one YAML document of ``kind``; every failure is a ConfigError at file:line:col."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(source, exc) from None
    except yaml.YAMLError as exc:
        raise error_at(source, f"YAML syntax error: {exc}") from None
    if root is None or (isinstance(root, ScalarNode) and root.tag.endswith(":null")):
        if kind.empty_problem is None:
            return Document({}, SourceMap())
        raise error_at(source, f"the file is empty: {kind.empty_problem}")
    if not isinstance(root, MappingNode):
        found = "a list" if isinstance(root, SequenceNode) else f"the value {root.value!r}"
        where = _location(source, root)
        raise error_at(
            source,
            f"a {kind.noun} is a mapping of sections ({kind.sections}), not {found}",
            where.line,
            where.column,
        )
    builder = _Builder(source, kind)
    try:
        data = builder.build(root, ())
    except yaml.MarkedYAMLError as exc:  # e.g. an unknown tag such as !!python/object
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise error_at(source, f"YAML error: {exc.problem}", line, column) from None
    if builder.problems:
        raise ConfigError(builder.problems)
    return Document(data, builder.where)

