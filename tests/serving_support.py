"""A store with two cloud models for one task: a slow accurate one and a fast, less accurate one.

The "large" model is the trained zoo cloud model with a wide convolution stack
stacked beside it: the stack really runs (so the model is genuinely slower),
and its output is scaled by zero, so the answers and accuracy are the cloud
model's. The "small" one is the zoo's edge model released under a cloud name.
Both are published with the accuracy measured here on the task's test data.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from agent.agent import Agent
from agent.confidence import softmax
from agent.federated.architectures import ArchConfig, build
from agent.model_store import ModelStore
from agent.session import open_session
from cloud.export import export_onnx
from cloud.local.mosquitto import Mosquitto
from cloud.serving.coordinator import Coordinator
from cloud.serving.worker import Worker, WorkerSettings
from cloud.store import load_checkpoint, publish
from tests.agent_support import sample_inputs, train_small_zoo
from tests.mqtt_helpers import Inbox, client, subscribe

LARGE, SMALL = "mnist1d-cloud", "mnist1d-cloud-small"
SLOW_WIDTH, SLOW_LAYERS, SLOW_UPSAMPLE = 192, 8, 12  # tens of ms per sample on one thread


class _Slowed(nn.Module):
    """``base`` plus a wide conv stack whose logits are multiplied by zero: slower, same answers."""

    def __init__(self, base: nn.Module, width: int, layers: int) -> None:
        super().__init__()
        self.base = base
        convs: list[nn.Module] = [nn.Unflatten(1, (1, 40)), nn.Upsample(scale_factor=SLOW_UPSAMPLE),
                                   nn.Conv1d(1, width, 9, padding=4), nn.ReLU()]
        for _ in range(layers):
            convs += [nn.Conv1d(width, width, 9, padding=4), nn.ReLU()]
        self.heavy = nn.Sequential(*convs, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(width, 10))
        self.register_buffer("zero", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.zero * self.heavy(x)


def measured_accuracy(path: Path, n: int = 500) -> float:
    x, y = sample_inputs(n, seed=1)
    session = open_session(path)
    return float((softmax(session.run(None, {"input": x})[0]).argmax(-1) == y).mean())


def publish_slowed(store: ModelStore, name: str) -> None:
    """Publish the zoo's cloud model with a wide conv stack beside it (tens of ms per sample, the same answers)
    as the next version of ``name``."""
    cloud = store.get("mnist1d", LARGE)
    checkpoint = load_checkpoint(cloud)
    config = ArchConfig.from_dict(checkpoint["arch"])
    base = build(config)
    base.load_state_dict(checkpoint["state_dict"])
    with tempfile.TemporaryDirectory() as tmp:
        slow = export_onnx(_Slowed(base, SLOW_WIDTH, SLOW_LAYERS), config, Path(tmp) / "slow.onnx")
        # its answers are the base model's (the stack is scaled by zero), so is its accuracy
        publish(store, "mnist1d", name, slow, metrics={"test_accuracy": measured_accuracy(cloud.model_path)},
                parent=cloud.manifest)


def two_model_store(root: Path) -> ModelStore:
    """The small zoo, plus ``mnist1d-cloud`` v2 (slowed) and ``mnist1d-cloud-small`` v1 (the edge model)."""
    store = train_small_zoo(root)
    publish_slowed(store, LARGE)
    edge = store.get("mnist1d", "mnist1d-edge")
    publish(store, "mnist1d", SMALL, edge.model_path, metrics={"test_accuracy": measured_accuracy(edge.model_path)},
            parent=edge.manifest)
    return store


def accuracies(store: ModelStore) -> dict[str, float]:
    return {name: store.get("mnist1d", name).manifest.metrics["test_accuracy"] for name in (LARGE, SMALL)}


@contextmanager
def running_worker(settings: WorkerSettings, broker: Mosquitto, kind: type[Worker] = Worker) -> Iterator[Worker]:
    """An in-process worker (of class ``kind``), returned once its first status report shows it connected and
    subscribed."""
    w = kind(settings)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        with client(broker, "probe") as probe:
            inbox = Inbox(probe)
            subscribe(probe, w.status_topic)
            inbox.get(timeout=10)
        yield w
    finally:
        w.stop()
        thread.join(10)


@contextmanager
def cloud_heard_by(agent: Agent, store: Path, broker: Mosquitto) -> Iterator[Coordinator]:
    """A real coordinator with one worker process serving ``store``, once ``agent`` has its status (so it offloads)."""
    coordinator = Coordinator(WorkerSettings(store=store, broker=broker.settings, worker_id="cloud"), workers=1,
                              status_interval_s=0.2)
    runner = threading.Thread(target=coordinator.run, daemon=True)
    runner.start()
    try:
        assert agent.uplink is not None
        deadline = time.monotonic() + 60
        while not (agent.uplink.cloud_status and agent.uplink.cloud_status.doc.get("workers_alive") == 1):
            assert time.monotonic() < deadline, "the agent did not hear the cloud's status"
            time.sleep(0.05)
        yield coordinator
    finally:
        coordinator.stop()
        runner.join(30)
