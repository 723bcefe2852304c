"""Loading a YAML file into a strict pydantic model, with one error type naming the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from agent.validation_errors import describe

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], error: type[Exception]) -> M:
    """``model`` validated from the YAML file at ``path``; any problem raises ``error("<path>: ...")``."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise error(f"{path}: {describe(exc)}") from None
