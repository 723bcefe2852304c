"""The one place an ONNX Runtime session is created.

The agent serves with it, and the compression benchmarks measure latency with
it, so a number in a report is a number the device will see. Providers are
tried in the profile's order; one this build of ONNX Runtime lacks is dropped
with a single warning per process (not one per model), and CPU is always the last resort.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
ProviderSpec = tuple[str, dict[str, str]]
_warned: set[tuple[str, ...]] = set()  # missing-provider sets already reported: one warning per process, not per model


def available_providers(wanted: Sequence[ProviderSpec]) -> list[ProviderSpec]:
    """``wanted`` minus what this ONNX Runtime build lacks (one warning per process), CPU appended."""
    present = set(ort.get_available_providers())
    kept = [(name, options) for name, options in wanted if name in present]
    missing = tuple(name for name, _ in wanted if name not in present)
    if missing and missing not in _warned:
        _warned.add(missing)
        log.warning(
            "execution provider(s) %s not available in this onnxruntime build (it has %s); falling back to %s",
            ", ".join(missing), ", ".join(sorted(present)), ", ".join(n for n, _ in kept) or CPU,
        )
    if CPU not in (name for name, _ in kept):
        kept.append((CPU, {}))
    return kept


def open_session(
    model_path: Path,
    providers: Sequence[ProviderSpec] = ((CPU, {}),),
    *,
    intra_op_threads: int | None = 1,
    inter_op_threads: int | None = 1,
) -> ort.InferenceSession:
    """A session with all graph optimisations, the given thread budget (None: ORT's default), usable providers."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads is not None:
        options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    chosen = available_providers(providers)
    return ort.InferenceSession(
        str(model_path),
        sess_options=options,
        providers=[name for name, _ in chosen],
        provider_options=[opts for _, opts in chosen],
    )


def first_output(model_path: Path, x: np.ndarray) -> np.ndarray:
    """What the ONNX model at ``model_path`` answers to ``x`` on its first input: its first output (a fresh session)."""
    session = open_session(model_path)
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])
