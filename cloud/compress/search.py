"""Try a recipe's grid on a task, measure every variant, and pick the Pareto-best within a budget.

Every variant is measured against the fp32 ONNX export of the same
architecture (the reference), with the session the agent will use. Every
choice is made on the validation set (the end of the training set, which
neither the zoo's training nor fine-tuning sees): among the variants whose
validation-accuracy drop is within the budget, the Pareto front over
(validation accuracy, latency at batch 32, size) is kept and its fastest
point is chosen (smaller file on a tie). The test set only reports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
from torch import nn

from agent.federated.architectures import ArchConfig
from agent.model_store import ModelStore, StoredModel
from agent.session import first_output
from cloud.compress import quantize
from cloud.compress.base_models import require_unseen_validation, teacher_of, trained_model
from cloud.compress.calibration import Calibration, fit_temperature
from cloud.compress.measure import Measurement, measure
from cloud.compress.prune import apply_unstructured, make_permanent, prune_structured
from cloud.compress.recipe import Recipe, Unstructured
from cloud.export import export_onnx
from cloud.zoo.tasks import TASKS, DataOptions, Dataset, Task, get_task
from cloud.zoo.train import seed_everything, train_classifier


@dataclass(frozen=True)
class Variant:
    """One point of the grid: how it was made, where it is, what it measured."""

    pruning: str
    quantization: str
    path: Path
    measurement: Measurement
    arch: ArchConfig
    pruned_model: nn.Module

    @property
    def name(self) -> str:
        return f"{self.pruning}+{self.quantization}"


@dataclass(frozen=True)
class SearchResult:
    task: str
    base: StoredModel
    reference: Variant
    cloud: Measurement
    variants: list[Variant]
    within_budget: list[Variant]
    pareto: list[Variant]
    chosen: Variant | None
    max_drop_points: float
    calibration: Calibration | None
    data: DataOptions  # what the variants were fine-tuned and chosen on

    def drop_points(self, variant: Variant) -> float:
        """Test-accuracy drop vs the reference: the reported result."""
        return (self.reference.measurement.accuracy - variant.measurement.accuracy) * 100

    def validation_drop_points(self, variant: Variant) -> float:
        """Validation-accuracy drop vs the reference: what the budget is checked on."""
        return (self.reference.measurement.validation_accuracy - variant.measurement.validation_accuracy) * 100

    def best_effort(self) -> Variant:
        """The variant most accurate on validation other than the reference (for a budget nobody met)."""
        return max((v for v in self.variants if v is not self.reference),
                   key=lambda v: v.measurement.validation_accuracy, default=self.reference)


def quantized_variants(fp32: Path, recipe: Recipe, calibration_x: np.ndarray) -> list[tuple[str, Path]]:
    """Every quantization variant of one fp32 file, per the recipe."""
    q = recipe.quantization
    out: list[tuple[str, Path]] = []
    for mode in q.modes:
        if mode == "fp32":
            out.append(("fp32", fp32))
        elif mode == "fp16":
            out.append(("fp16", quantize.fp16(fp32, fp32.with_name("fp16.onnx"))))
        elif mode == "dynamic":
            for pc in q.per_channel:
                label = f"dynamic{'-pc' if pc else ''}"
                out.append((label, quantize.dynamic_int8(fp32, fp32.with_name(f"{label}.onnx"), per_channel=pc)))
        else:
            for method in q.calibration:
                for pc in q.per_channel:
                    label = f"static-{method}{'-pc' if pc else ''}"
                    target = fp32.with_name(f"{label}.onnx")
                    out.append((label, quantize.static_int8(fp32, target, calibration_x, method=method, per_channel=pc)))
    return out


def _masked_copy(base: nn.Module, config: ArchConfig, sparsity: float, settings: Unstructured,
                 ) -> tuple[nn.Module, ArchConfig]:
    """A copy of ``base`` with the smallest weights masked (the base stays dense for the other variants)."""
    return apply_unstructured(copy.deepcopy(base), sparsity, scope=settings.scope), config


def _pruned_models(base: nn.Sequential, config: ArchConfig, recipe: Recipe, task: Task, train: Dataset,
                   teacher: nn.Module | None, log: Callable[[str], None],
                   ) -> Iterator[tuple[str, nn.Module, ArchConfig]]:
    """The base model (when keep ratio 1.0 is listed), then each pruned variant as soon as it is fine-tuned.

    Fine-tuning takes minutes per variant on a small CPU: the caller measures and reports one before the next starts.
    """
    p = recipe.pruning
    if 1.0 in p.structured.keep_ratios:
        yield "none", base, config
    jobs: list[tuple[str, Callable[[], tuple[nn.Module, ArchConfig]]]] = []
    narrower = [ratio for ratio in p.structured.keep_ratios if ratio < 1.0]
    if narrower and config.kind == "factory":
        log(f"  structured pruning skipped: {config.factory} is your code, not the zoo's conv family")
        narrower = []
    for ratio in narrower:
        jobs.append((f"channels{round(ratio * 100)}-{p.structured.norm}",
                     partial(prune_structured, base, config, ratio, norm=p.structured.norm)))
    for sparsity in p.unstructured.sparsities:
        jobs.append((f"sparse{round(sparsity * 100)}-{p.unstructured.scope}",
                     partial(_masked_copy, base, config, sparsity, p.unstructured)))
    d = recipe.distillation
    epochs = task.finetune_epochs if p.finetune_epochs is None else p.finetune_epochs
    for label, make in jobs:
        model, arch = make()
        if epochs:
            log(f"  fine-tuning {label} ({epochs} epochs)")
            train_classifier(
                model, train.x_train, train.y_train, epochs=epochs, generator=seed_everything(recipe.seed),
                max_lr=3e-3, teacher=teacher, alpha=d.alpha if d else 0.0, temperature=d.temperature if d else 1.0,
                augment=task.augment, description=f"fine-tune {label}", progress=False,
            )
        yield label, make_permanent(model).eval(), arch


def search(store: ModelStore, task_name: str, recipe: Recipe, workdir: Path, *, max_drop_points: float,
           data: DataOptions = DataOptions(), log: Callable[[str], None] = print) -> SearchResult:
    """Run the whole grid; files land in ``workdir/<pruning>/<quantization>.onnx``."""
    task = get_task(task_name)
    cloud_stored, cloud, ours = teacher_of(store, task_name)
    base_role = recipe.base or ("cloud" if task_name in TASKS else "edge")  # a user's task: their cloud model teaches
    base_stored, base, config = trained_model(store, task_name, base_role)
    log(f"  base {base_stored.manifest.name} v{base_stored.manifest.version}, teacher {cloud_stored.manifest.name}"
        f" v{cloud_stored.manifest.version}{'' if ours else ' (imported: the rows it trained on are unknown)'}")
    require_unseen_validation(store, base_stored, base_role, data)
    if recipe.distillation and ours:  # the teacher's knowledge of the validation rows would reach the student too
        require_unseen_validation(store, cloud_stored, "cloud", data)
    full = task.load(data)
    train, (x_val, y_val) = full.validation_split()  # the part the zoo's models were not trained on
    rng = np.random.default_rng(recipe.seed)
    calibration_x = train.x_train[rng.permutation(len(train.x_train))[: recipe.quantization.calibration_samples]]

    def measured(path: Path) -> Measurement:
        return measure(path, (full.x_test, full.y_test), (x_val, y_val), repeats=recipe.latency_repeats)

    cloud_measurement = measured(cloud_stored.model_path)
    reference_file = export_onnx(base, config, workdir / "none" / "fp32.onnx")
    reference = Variant("none", "fp32", reference_file, measured(reference_file), config, base)
    variants: list[Variant] = []
    teacher = cloud if recipe.distillation else None
    for pruning, model, arch in _pruned_models(base, config, recipe, task, train, teacher, log):
        fp32 = reference_file if pruning == "none" else export_onnx(model, arch, workdir / pruning / "fp32.onnx")
        for quantization, path in quantized_variants(fp32, recipe, calibration_x):
            is_reference = (pruning, quantization) == ("none", "fp32")
            variant = reference if is_reference else Variant(pruning, quantization, path, measured(path), arch, model)
            m = variant.measurement
            log(f"  {variant.name:<36} validation {m.validation_accuracy:.2%}  test {m.accuracy:.2%}  "
                f"b32 {m.latency_b32_ms:.3f} ms  {m.size_bytes / 1024:.1f} KiB")
            variants.append(variant)
    within, pareto, chosen = choose(reference.measurement, variants, max_drop_points)
    calibration = None
    if chosen is not None:
        calibration = fit_temperature(first_output(chosen.path, x_val), y_val)
    return SearchResult(task_name, base_stored, reference, cloud_measurement, variants, within, pareto, chosen,
                        max_drop_points, calibration, data)


class Measured(Protocol):
    """Anything ``choose`` can choose among: a variant with its measurement."""

    @property
    def measurement(self) -> Measurement: ...


V = TypeVar("V", bound=Measured)


def choose(reference: Measurement, variants: list[V], max_drop_points: float) -> tuple[list[V], list[V], V | None]:
    """(within the budget, their Pareto front, its fastest point): all on validation accuracy, never on test."""
    ref_acc = reference.validation_accuracy
    within = [v for v in variants if (ref_acc - v.measurement.validation_accuracy) * 100 <= max_drop_points]
    pareto = [v for v in within if not any(_dominates(o.measurement, v.measurement) for o in within)]
    chosen = min(pareto, key=lambda v: (v.measurement.latency_b32_ms, v.measurement.size_bytes), default=None)
    return within, pareto, chosen


def _dominates(a: Measurement, b: Measurement) -> bool:
    """a is at least as good as b everywhere and better somewhere (validation accuracy up, latency and size down)."""
    acc_a, acc_b = a.validation_accuracy, b.validation_accuracy
    no_worse = acc_a >= acc_b and a.latency_b32_ms <= b.latency_b32_ms and a.size_bytes <= b.size_bytes
    better = acc_a > acc_b or a.latency_b32_ms < b.latency_b32_ms or a.size_bytes < b.size_bytes
    return no_worse and better
