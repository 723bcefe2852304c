"""A request's tensors as a model takes them: every declared input by name, batch axis fitted, checked.

A model takes one input or several (features and a mask, an image and its metadata), and answers one
output or several. The agent's local path and the cloud workers both match what a request sends to
what the graph declares here, so a missing, extra, misshapen or mistyped tensor is the protocol's
error naming it, never ONNX Runtime's text as an internal error.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

import numpy as np

from agent.manifest import OutputKind, TensorSpec
from agent.protocol import ErrorCode, ProtocolError
from agent.protocol.tensors import fit_batch, require_finite

#: One array per declared input (or output), in the graph's order, all with the same number of rows.
Rows = tuple[np.ndarray, ...]
#: The answer's name for a classifier's calibrated class scores, whatever the graph calls its first output.
SCORES = "probabilities"
_ORT_NAMES = {"float": "float32", "double": "float64"}  # ONNX Runtime's element names that are not numpy's
_NUMERIC = "biuf"


class NodeArg(Protocol):
    """What ONNX Runtime's ``session.get_inputs()`` and ``get_outputs()`` items tell."""

    name: str
    type: str
    shape: list[int | str | None]


def graph_specs(args: Sequence[NodeArg]) -> list[TensorSpec]:
    """A session's inputs or outputs as specs: symbolic and unknown dimensions are None (any size)."""
    specs = []
    for arg in args:
        element = arg.type.removeprefix("tensor(").removesuffix(")")
        shape = [d if isinstance(d, int) and d > 0 else None for d in arg.shape]
        specs.append(TensorSpec(name=arg.name, dtype=_ORT_NAMES.get(element, element), shape=shape))
    return specs


def fit_inputs(given: Mapping[str, np.ndarray], declared: Sequence[TensorSpec], what: str, *, cast: bool = False,
               reserved: Collection[str] = ()) -> Rows:
    """``given`` as ``declared`` takes it, or the protocol's error saying which tensor is wrong and how.

    A model with one input takes the request's one tensor under any name (callers of a single-input model
    have always sent just the tensor); a model with several takes each by its name, and nothing else.
    ``reserved`` names are not model inputs (the cloud's ``edge_probs``). ``cast`` converts between
    numeric types where no information is lost in kind (ints to floats, float64 to float32); without it
    the element type must be the declared one.
    """
    sent = {name: x for name, x in given.items() if name not in reserved}
    if len(declared) == 1 and len(sent) == 1:
        pairs = [(declared[0], next(iter(sent.values())))]
    else:
        check_input_names(what, [spec.name for spec in declared], list(sent))
        pairs = [(spec, sent[spec.name]) for spec in declared]
    several = len(pairs) > 1
    rows = []
    for spec, x in pairs:
        where = f"{what}: input {spec.name!r}" if several else what
        rows.append(_fit_one(x, spec, where, cast))
    counts = {len(x) for x in rows}
    if len(counts) > 1:
        raise ProtocolError(ErrorCode.SHAPE_MISMATCH, f"{what}: the inputs carry different numbers of rows"
                            f" ({', '.join(f'{spec.name} {len(x)}' for (spec, _), x in zip(pairs, rows, strict=True))})")
    return tuple(rows)


def check_input_names(what: str, declared: list[str], sent: list[str]) -> None:
    """A request sends exactly the inputs the model declares, by name; BAD_REQUEST listing both otherwise."""
    if sorted(sent) != sorted(declared):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} takes the input{'s' if len(declared) > 1 else ''}"
                            f" {', '.join(map(repr, declared))}; the request sends"
                            f" {', '.join(map(repr, sent)) or 'none'}")


def _fit_one(x: np.ndarray, spec: TensorSpec, where: str, cast: bool) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if x.dtype != want:
        lossless_kind = x.dtype.kind in _NUMERIC and (want.kind == "f" or x.dtype.kind == want.kind)
        if not (cast and lossless_kind):
            raise ProtocolError(ErrorCode.UNSUPPORTED_DTYPE, f"{where} takes {want.name}, got {x.dtype.name}")
        x = x.astype(want)
    x = fit_batch(x, spec.shape, where)
    require_finite(x, where)
    return x


def named(rows: Rows, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Rows by their declared names, as a request or an answer carries them."""
    return {spec.name: x for spec, x in zip(specs, rows, strict=True)}


def answer_specs(kind: OutputKind, outputs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """A model's outputs as its answers name them.

    Class scores as ``probabilities`` (float32, calibrated), the rest by their own names; a model without class
    scores (``other``) answers every output as its graph names it. Made once per loaded model: answers are
    ``named(rows, specs)``, and the OIP metadata lists the same.
    """
    if kind == "other":
        return list(outputs)
    return [TensorSpec(name=SCORES, dtype="float32", shape=[None, None]), *outputs[1:]]


def stacked(parts: Sequence[Rows]) -> Rows:
    """Several requests' rows as one batch, input by input (one request's as they are)."""
    return parts[0] if len(parts) == 1 else tuple(np.concatenate(inputs) for inputs in zip(*parts, strict=True))


def sliced(rows: Rows, start: int, end: int) -> Rows:
    """One request's rows ``start:end`` of a batch's outputs, output by output."""
    return tuple(out[start:end] for out in rows)
