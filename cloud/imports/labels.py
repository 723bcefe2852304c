"""Class labels for an imported classifier: ``labels.txt``, one class name per line, in the order of its scores."""

from __future__ import annotations

from pathlib import Path

from agent.manifest import MAX_LABEL
from cloud.imports.inspection import ImportRefused, Inspected


def read_labels(path: Path, model: Inspected) -> list[str]:
    """The file's labels, checked against the model; ImportRefused naming the line or the count that is wrong."""
    if model.classes is None:
        raise ImportRefused(f"{path}: labels name class scores, and this model's first output has none"
                            f" ({model.why})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ImportRefused(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ImportRefused(f"{path}: cannot be read: {exc.strerror or exc}") from None
    labels = [line.strip() for line in text.rstrip("\r\n").splitlines()]
    for number, label in enumerate(labels, 1):
        if not label or len(label) > MAX_LABEL:
            raise ImportRefused(f"{path}:{number}: a label is one line of 1 to {MAX_LABEL} characters")
    if len(labels) != model.classes:
        raise ImportRefused(f"{path}: {len(labels)} labels, and the model scores {model.classes} classes: one line"
                            " per class, in the order of the model's scores")
    return labels
