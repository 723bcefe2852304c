"""Read a YAML config file into a strict model: positions kept, optional environment overrides, validation.

Device profiles, the serve config, devices files and compression recipes all load
through here, so each reports every problem at file:line:col in the same words.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from agent.config.base import FileConfig
from agent.config.env_overrides import apply_env_overrides
from agent.config.explain import explain
from agent.config.problems import ConfigError, error_at
from agent.config.yaml_source import Document, DocumentKind, parse_document

M = TypeVar("M", bound=BaseModel)


def load_model(path: str | os.PathLike[str], model: type[M], kind: DocumentKind,
               env: Mapping[str, str] | None = None) -> M:
    """``model`` validated from the YAML file at ``path``; with ``env``, ``FEDGE__*`` overrides apply first.

    Raises ConfigError listing every problem found, each at file:line:col (or naming the variable).
    """
    source = os.fspath(path)
    loaded = parse_model(read_text(source, f"a {kind.noun}"), source, model, kind, env)
    if isinstance(loaded, FileConfig):
        loaded._source = Path(source).resolve()
    return loaded


def parse_model(text: str, source: str, model: type[M], kind: DocumentKind,
                env: Mapping[str, str] | None = None) -> M:
    """Validate YAML text of ``kind``; ``source`` names it in error messages."""
    document = parse_document(text, source, kind)
    if env is not None:
        apply_env_overrides(document, env)
    return validate_document(document, model)


def validate_document(document: Document, model: type[M]) -> M:
    """``model`` from a parsed document; ConfigError pointing each problem at its line."""
    try:
        return model.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(explain(exc, document, model)) from None


def read_text(source: str, what: str) -> str:
    """A YAML file's text, or a ConfigError saying why not in words a person can act on (``what``: a noun)."""
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
