"""What a config file (a device profile, a serve config, a devices file) can get wrong, as readable problems."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file position (1-based) or an environment variable."""

    source: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.source
        return f"{self.source}:{self.line}:{self.column}"

    def sort_key(self) -> tuple[int, int, int, str]:
        """File positions in reading order first, then environment overrides."""
        if self.line is None:
            return (1, 0, 0, self.source)
        return (0, self.line, self.column or 0, self.source)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where, which key, and what to do."""

    location: Location | None
    path: str
    message: str

    def __str__(self) -> str:
        parts = [str(self.location)] if self.location is not None else []
        if self.path:
            parts.append(self.path)
        parts.append(self.message)
        return ": ".join(parts)


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists every reason found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def error_at(
    source: str, message: str, line: int | None = None, column: int | None = None
) -> ConfigError:
    """A ConfigError with a single problem at a file (position) or environment variable."""
    return ConfigError([Problem(Location(source, line, column), "", message)])
