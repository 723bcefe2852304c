"""A simulated fleet's data: non-IID streams, and what each device would have kept of its stream.

Each device gets a Dirichlet(alpha) mix of the task's classes (small alpha: a
device sees mostly a few classes), streamed through the serving edge model as
the agent would: inputs whose confidence is below the threshold are offloaded,
a random ``audit_rate`` of the others are audited, and both are kept with the
cloud's probabilities; a ``feedback_rate`` of the kept samples also get their
true label, as users' feedback. The result is one sample store per device, in
the agent's own format (agent/samples.py), which the federated ClientApp reads.

The streams are data no zoo model trained on: fresh MNIST-1D samples (the
generator is seeded apart), or the training rows of a fixed data set minus the
validation rows the cloud judges on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.confidence import softmax
from agent.model_store import ModelStore
from agent.samples import SampleStore
from agent.session import first_output
from cloud.zoo.tasks import DataOptions, get_task


@dataclass(frozen=True)
class FleetPlan:
    """How a simulated fleet is made."""

    devices: int = 10
    dirichlet: float = 0.3
    samples_per_device: int = 800  # inputs each device's stream holds
    threshold: float = 0.8  # offload below this top probability
    audit_rate: float = 0.02
    feedback_rate: float = 0.05  # share of kept samples a user labelled
    seed: int = 0


@dataclass(frozen=True)
class DeviceData:
    store: Path
    kept: int  # samples in the store
    offloaded: int
    audited: int
    classes: list[int]  # the classes the device mostly sees (at least 10 % of its stream)


def stream_pool(task: str, plan: FleetPlan, data: DataOptions) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels for the fleet's streams, disjoint from the cloud's validation and test rows."""
    t = get_task(task)
    if task == "mnist1d":  # procedural: fresh samples under another seed, as a fleet in the field would see
        fresh = dataclasses.replace(data, train_size=plan.devices * plan.samples_per_device, test_size=100,
                                    seed=data.seed + 1000 + plan.seed)
        pool = t.load(fresh)
        return pool.x_train, pool.y_train
    train, _ = t.load(data).validation_split()
    return train.x_train, train.y_train


def dirichlet_partition(labels: np.ndarray, devices: int, alpha: float, per_device: int,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices per device: each device's class mix drawn from Dirichlet(alpha), rows without replacement.

    A class that runs out is topped up from the rest, so every device gets ``per_device`` rows while the pool lasts.
    """
    classes = np.unique(labels)
    by_class = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    parts = []
    for _ in range(devices):
        mix = rng.dirichlet([alpha] * len(classes))
        wanted = rng.multinomial(per_device, mix)
        rows: list[int] = []
        for c, n in zip(classes, wanted, strict=True):
            rows += [by_class[c].pop() for _ in range(min(n, len(by_class[c])))]
        spare = [c for c in classes if by_class[c]]
        while len(rows) < per_device and spare:
            c = spare[int(rng.integers(len(spare)))]
            rows.append(by_class[c].pop())
            spare = [c for c in classes if by_class[c]]
        parts.append(np.array(rows, dtype=np.int64))
    return parts


def _probabilities(path: Path, x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return softmax(first_output(path, x), temperature)


def build_fleet(store: ModelStore, task: str, edge_name: str, plan: FleetPlan, folder: Path,
                data: DataOptions = DataOptions()) -> list[DeviceData]:
    """One sample store per device under ``folder``/device-<i>/samples.db, filled as the agent would."""
    rng = np.random.default_rng(plan.seed)
    x, y = stream_pool(task, plan, data)
    parts = dirichlet_partition(y, plan.devices, plan.dirichlet, plan.samples_per_device, rng)
    edge = store.get(task, edge_name)
    edge_probs = _probabilities(edge.model_path, x, edge.manifest.temperature)
    cloud_probs = _probabilities(store.get(task, f"{task}-cloud").model_path, x)
    out = []
    for device, rows in enumerate(parts):
        path = folder / f"device-{device}" / "samples.db"
        if path.exists():
            path.unlink()
        samples = SampleStore(path)
        offloaded = audited = 0
        for row in rows:
            unsure = edge_probs[row].max() < plan.threshold
            if not unsure and rng.random() >= plan.audit_rate:
                continue
            request = f"d{device}-r{row}"
            samples.add(request, task, x[row:row + 1], cloud_probs[row:row + 1], "offload" if unsure else "audit")
            offloaded, audited = offloaded + unsure, audited + (not unsure)
            if rng.random() < plan.feedback_rate:
                samples.feedback(request, int(y[row]), task)
        samples.close()
        counts = np.bincount(y[rows], minlength=int(y.max()) + 1)
        out.append(DeviceData(path, offloaded + audited, offloaded, audited,
                              [int(c) for c in np.flatnonzero(counts >= 0.1 * len(rows))]))
    return out


def pooled(devices: list[DeviceData], task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every device's kept samples in one place (inputs, soft labels, labels): what centralized training would see."""
    sets = []
    for device in devices:
        reader = SampleStore.reader(device.store)
        sets.append(reader.training_set(task))
        reader.close()
    return (np.concatenate([s.x for s in sets]), np.concatenate([s.soft for s in sets]),
            np.concatenate([s.labels for s in sets]))
