"""Every K rounds: the aggregate becomes an edge release, if it is better than the one serving.

The fp32 aggregate is exported to ONNX and quantized by the compression
pipeline's own variants (cloud/compress); variants more than the budget below
the fp32 aggregate on the validation rows are out, and the fastest of the
Pareto front is chosen, as ``fedge-cloud compress`` chooses. The choice is
published only if it beats the current edge release on the same rows by more
than chance (McNemar's test on the rows they disagree on); then it
is signed and, with a broker, rolled out through the canary and shadow gate of
``fedge-cloud rollout``. The reason for anything not published goes into the
round's record.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agent.federated.architectures import ArchConfig
from agent.model_store import ModelStore, StoredModel
from agent.mqtt_client import BrokerSettings
from agent.protocol import Topics
from agent.session import first_output
from cloud.compress.calibration import fit_temperature
from cloud.compress.measure import Measurement, measure
from cloud.compress.recipe import Recipe
from cloud.compress.search import choose, quantized_variants
from cloud.export import export_onnx
from cloud.federated.evaluation import HeldOut, beats
from cloud.federated.settings import FederatedSettings
from cloud.registry import ModelState, Registry
from cloud.releases.channel import ReleaseChannel
from cloud.releases.keys import load_private_key
from cloud.releases.rollout import Rollout, RolloutError, RolloutPlan
from cloud.releases.signing import sign_stored
from cloud.store import publish

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseOutcome:
    """What became of one release attempt, for the round table."""

    published: StoredModel | None
    note: str  # "mnist1d-edge v3 promoted", or why nothing was published


def edge_variant(model: torch.nn.Module, arch: ArchConfig, data: HeldOut, max_drop_points: float, workdir: Path
                 ) -> Quantized | None:
    """The fastest quantization of ``model`` within ``max_drop_points`` of its fp32 export on the validation rows."""
    fp32 = export_onnx(model, arch, workdir / "fp32.onnx")
    # whole batches of 32 only: ONNX Runtime's calibrator stacks the batches' outputs
    rows = max(32, min(256, len(data.x_val)) // 32 * 32)
    calibration_x = data.x_val[np.random.default_rng(0).permutation(len(data.x_val))[:rows]]
    variants = [(label, path, measure(path, (data.x_test, data.y_test), (data.x_val, data.y_val), repeats=50))
                for label, path in quantized_variants(fp32, Recipe(), calibration_x)]
    reference = next(m for label, _, m in variants if label == "fp32")
    _, _, chosen = choose(reference, [Quantized(label, path, m) for label, path, m in variants], max_drop_points)
    return chosen


def release_aggregate(model: torch.nn.Module, arch: ArchConfig, current: StoredModel, data: HeldOut,
                      settings: FederatedSettings, store: ModelStore, registry: Registry, round_number: int
                      ) -> ReleaseOutcome:
    """Compress, compare, publish, sign and roll out the aggregate of ``round_number``."""
    with tempfile.TemporaryDirectory() as tmp:
        chosen = edge_variant(model, arch, data, settings.max_accuracy_drop, Path(tmp))
        if chosen is None:
            return ReleaseOutcome(None, f"not published: no variant within {settings.max_accuracy_drop:g} points of"
                                        f" the fp32 aggregate on the validation rows")
        session_logits = first_output(chosen.path, data.x_val)
        old_right = first_output(current.model_path, data.x_val).argmax(axis=1) == data.y_val
        better, gained, lost = beats(session_logits.argmax(axis=1) == data.y_val, old_right)
        if not better:
            return ReleaseOutcome(None, f"not published: {chosen.name} {chosen.measurement.validation_accuracy:.2%}"
                                        f" on validation against {current.manifest.name} v{current.manifest.version}'s"
                                        f" {old_right.mean():.2%} (right on {gained} rows it misses, wrong on {lost} it"
                                        " gets) is no gain beyond chance")
        stored = publish_variant(
            store, settings.task, settings.model_name, chosen, data, arch, model,
            recipe={"federated": {"run": settings.run, "round": round_number, "strategy": settings.strategy},
                    "quantization": chosen.name, "max_accuracy_drop_points": settings.max_accuracy_drop,
                    "trained": (current.manifest.recipe or {}).get("trained")},
            parent=current)
    registry.add_model(settings.task, settings.model_name, stored.manifest.version, ModelState.STAGED,
                       stored.manifest.metrics)
    name = f"{settings.model_name} v{stored.manifest.version}"
    if not settings.key_file:
        return ReleaseOutcome(stored, f"{name} stored, unsigned (no --key): not rolled out")
    signed = sign_stored(store, settings.task, settings.model_name, stored.manifest.version, Path(settings.key_file))
    if not settings.broker:
        return ReleaseOutcome(signed, f"{name} signed (no --broker): roll it out with fedge-cloud rollout")
    return ReleaseOutcome(signed, f"{name} {_roll_out(signed, settings, store, registry)}")


def publish_variant(store: ModelStore, task: str, name: str, chosen: Quantized, data: HeldOut, arch: ArchConfig,
                    model: torch.nn.Module, *, recipe: dict[str, object], parent: StoredModel | None) -> StoredModel:
    """``chosen`` as the next version of ``name``, with what the next federated run starts from.

    The manifest carries its measurements and a temperature fit on the validation rows; the checkpoint,
    the fp32 weights it was quantized from.
    """
    m = chosen.measurement
    return publish(
        store, task, name, chosen.path,
        metrics={"test_accuracy": m.accuracy, "validation_accuracy": m.validation_accuracy,
                 "latency_b1_ms": m.latency_b1_ms, "latency_b32_ms": m.latency_b32_ms},
        recipe=recipe, temperature=fit_temperature(first_output(chosen.path, data.x_val), data.y_val).temperature,
        parent=None if parent is None else parent.manifest,
        checkpoint={"arch": arch.as_dict(), "state_dict": model.state_dict()})


@dataclass(frozen=True)
class Quantized:
    """One quantization of the aggregate: its name, file and measurement."""

    name: str
    path: Path
    measurement: Measurement


def _roll_out(stored: StoredModel, settings: FederatedSettings, store: ModelStore, registry: Registry) -> str:
    """Canary, shadow gate, then the group (or back): the outcome in a few words."""
    password = os.environ.get(settings.broker_password_env) if settings.broker_password_env else None
    broker = BrokerSettings.from_url(settings.broker, BrokerSettings(username=settings.broker_username or None,
                                                                     password=password))
    plan = RolloutPlan(settings.task, settings.model_name, stored.manifest.version, settings.group, settings.canary,
                       settings.rollout_timeout_s, first_release=False)
    try:
        with ReleaseChannel(broker, Topics()) as channel:
            result = Rollout(store, registry, channel, load_private_key(Path(settings.key_file))).run(plan)
    except (RolloutError, ConnectionError, OSError) as exc:
        log.warning("rollout of %s v%s did not run: %s", settings.model_name, stored.manifest.version, exc)
        return f"signed, not rolled out: {exc}"
    return f"{result.outcome} ({result.reason})"
