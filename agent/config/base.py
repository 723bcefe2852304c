"""The strict base every config section inherits (profiles, serve config), and the shared field types.

One base (Frigate's `extra="forbid"` idea) so a typo anywhere is an error, not a
silently ignored key; `strict=True` so `threads: "4"` is a type error instead of
a guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, StringConstraints
from pydantic_core import PydanticCustomError

#: Device ids, kinds, task names and client ids end up in MQTT topic levels,
#: so they exclude '/', '+', '#' and whitespace.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TASK_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
STORE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
TOPIC_PREFIX_PATTERN = r"^[^/$+#\s][^/+#\s]*(/[^/+#\s]+)*$"
HOST_PORT_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$"

#: What each pattern means, in words, for error messages.
PATTERN_HINTS: dict[str, str] = {
    ID_PATTERN: "use 1-64 letters, digits, '_' or '-' (it is part of MQTT topics)",
    TASK_PATTERN: "use 1-64 lowercase letters, digits, '_' or '-' (it is part of MQTT topics)",
    STORE_NAME_PATTERN: "use lowercase letters, digits, '.', '_' or '-'",
    ENV_NAME_PATTERN: "give the name of an environment variable, e.g. FEDGE_MQTT_PASSWORD",
    TOPIC_PREFIX_PATTERN: "use non-empty topic levels separated by '/', without wildcards"
    " ('+', '#'), spaces or a leading '$', e.g. fedge/v1",
    HOST_PORT_PATTERN: "write host:port, e.g. fl.example.net:9092",
}

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
TaskName = Annotated[str, StringConstraints(pattern=TASK_PATTERN)]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    #: Key -> advice, for keys that are wrong on purpose (e.g. an inline password).
    unknown_key_hints: ClassVar[dict[str, str]] = {}
    #: What the members of a discriminated union are called in errors.
    kind_noun: ClassVar[str] = "kind"


class FileConfig(StrictModel):
    """The root of a config file: relative paths in it follow the file, not the working directory.

    So a file behaves the same from a shell, systemd or a container. The loader sets the source.
    """

    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file this config was loaded from, if any."""
        return self._source

    def resolve_path(self, path: str) -> Path:
        """A path from the file, made absolute against the file's directory."""
        candidate = Path(path).expanduser()
        if candidate.is_absolute() or self._source is None:
            return candidate
        return self._source.parent / candidate


def rule_broken(message: str, *at: str | int) -> PydanticCustomError:
    """A cross-field error located at `at` below the model that raises it.

    Model validators only know their own location; `at` lets the error point at
    the offending key (explain.py appends it), so the user sees file:line:col.
    """
    return PydanticCustomError("profile_rule", message, {"at": at})
