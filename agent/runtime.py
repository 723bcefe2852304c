"""A task's local model: verified ONNX file, ONNX Runtime session, input checks and micro-batcher.

The graph says what the model takes and answers: every declared input by name, every output. The
profile's ``input`` describes the first input (and may be stricter than the graph about its shape).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from agent.admission import Admission
from agent.batching import MicroBatcher
from agent.confidence import output_scores
from agent.feeds import Rows, answer_specs, fit_inputs, graph_specs
from agent.manifest import Manifest, OutputKind, TensorSpec
from agent.model_store import ModelStore
from agent.profile.model_spec import ModelSpec
from agent.profile.schema import Profile
from agent.protocol import dtypes
from agent.session import open_session

log = logging.getLogger(__name__)


def check_precision(task: str, spec: ModelSpec, manifest: Manifest) -> None:
    """Say when a release is not the precision the profile asks for: it runs anyway, as released.

    The cloud decides what a release is. A device asking for int8 and running a plain fp32 export is
    slower than its owner planned and is warned, with the remedy; compress's choice of another
    precision (the fastest variant within its budget, one per task for the whole fleet) is only noted.
    """
    released = manifest.precision
    if released is None or released == spec.precision:
        return
    if "quantization" in (manifest.recipe or {}):  # compress's choice for the whole fleet: nothing to act on here
        log.info("models.%s.precision is %s; the release %s v%s is %s, the variant compression chose as fastest"
                 " within its accuracy budget", task, spec.precision, manifest.name, manifest.version, released)
        return
    log.warning("models.%s.precision is %s but the release %s v%s is an %s export; it runs as released."
                " `fedge-cloud compress --task %s` releases a compressed variant.", task, spec.precision,
                manifest.name, manifest.version, released, manifest.task)


@dataclass
class LocalModel:
    """One loaded model; ``batcher.call`` runs it and gives every output.

    The first output comes as calibrated probabilities (softmax(logits / T)) where it holds class scores.
    """

    task: str
    name: str
    version: str
    temperature: float
    output_kind: OutputKind
    spec: ModelSpec
    inputs: list[TensorSpec]  # what requests must send, in the graph's order (the first as the profile says)
    outputs: list[TensorSpec]
    answers: list[TensorSpec]  # the outputs as answers name them (feeds.answer_specs)
    batcher: MicroBatcher
    manifest: Manifest | None
    admission: Admission[Any]  # the HTTP requests worked on at once (the profile's limit)

    @classmethod
    def load(cls, task: str, spec: ModelSpec, profile: Profile, store: ModelStore, *, max_queue_depth: int) -> LocalModel:
        """Verify and open the model a profile names (store release or local file)."""
        manifest: Manifest | None = None
        if spec.name is not None:
            stored = store.verified(task, spec.name, spec.version)
            path: Path = stored.model_path
            manifest = stored.manifest
            name, version, temperature = manifest.name, str(manifest.version), manifest.temperature
            kind = manifest.kind
            check_precision(task, spec, manifest)
        else:
            assert spec.path is not None
            path = profile.resolve_path(spec.path)
            name, version, temperature = path.stem, "local", 1.0
            kind = spec.output_kind or "logits"
        hardware = profile.hardware
        session = open_session(path, hardware.ort_providers(), intra_op_threads=hardware.intra_op_threads,
                               inter_op_threads=hardware.inter_op_threads)
        inputs, outputs = graph_specs(session.get_inputs()), graph_specs(session.get_outputs())
        if inputs[0].name != spec.input.name:
            raise ValueError(f"{path}: the model's first input is {inputs[0].name!r} but the profile says"
                             f" {spec.input.name!r} (models.{task}.input.name)")
        inputs[0] = TensorSpec(name=spec.input.name, dtype=spec.input.dtype,
                               shape=[None if d == -1 else d for d in spec.input.shape])
        names = [i.name for i in inputs]
        scores = output_scores(kind, temperature)

        def run(batch: Rows) -> Rows:
            # Calibrated once per batch, not once per caller: the callers' threads share one GIL.
            first, *rest = session.run(None, dict(zip(names, batch, strict=True)))
            return scores(first), *rest

        batcher = MicroBatcher(run, max_batch_size=spec.batching.max_batch_size,
                               max_queue_delay_ms=spec.batching.max_queue_delay_ms,
                               max_queue_depth=max_queue_depth, name=task)
        log.info("loaded %s %s v%s for task %s (providers %s)", path, name, version, task, session.get_providers())
        return cls(task, name, version, temperature, kind, spec, inputs, outputs, answer_specs(kind, outputs), batcher,
                   manifest, Admission(spec.max_concurrent_requests))

    def check_inputs(self, given: dict[str, np.ndarray]) -> Rows:
        """The request's tensors as the model takes them, or the protocol's error naming the mismatch.

        Every request passes here (HTTP API, `fedge-agent infer`, in-process), so non-finite input is refused here.
        """
        return fit_inputs(given, self.inputs, f"task {self.task}")

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """The OIP model metadata: what infer takes and answers. Made once: every HTTP request reads it."""

        def described(specs: list[TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": dtypes.by_name(s.dtype).oip,  # what infer takes, e.g. FP32
                     "shape": [-1 if d is None else d for d in s.shape]} for s in specs]

        return {"name": self.task, "versions": [self.version], "platform": "onnxruntime",
                "inputs": described(self.inputs), "outputs": described(self.answers)}

    @property
    def labels(self) -> list[str] | None:
        """The classes' names, where the release has them (a profile's local file has none)."""
        return self.manifest.labels if self.manifest else None
