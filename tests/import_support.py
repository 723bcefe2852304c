"""A user's own models for the import and calibration tests: small torch classifiers exported as users do,
and the command line and agent profile around them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from agent.profile import parse_profile
from agent.protocol import ErrorReply, InferReply, InferRequest, Topics, decode_reply, encode_request
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.serving.worker import WorkerSettings
from tests.agent_support import profile_doc
from tests.mqtt_helpers import Inbox, client, subscribe
from tests.serving_support import running_worker

BIN = Path(sys.executable).parent
TASK = "gestures"
LABELS = ["wave", "point", "fist", "palm"]


class Classifier(nn.Module):
    """A small image classifier as a user exports it: input 'pixels' [batch, 3, 16, 16], 4 classes."""

    def __init__(self, softmax: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 4))
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x) * 5
        return torch.softmax(logits, dim=-1) if self.softmax else logits


class Embedder(nn.Module):
    """No class scores: a 16-dimensional embedding per row."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def import_model(tmp: Path, onnx_file: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fedge-cloud"), "models", "import", "--task", TASK, "--onnx", str(onnx_file),
                           "--store", str(tmp / "state" / "models"), "--registry", str(tmp / "registry.db"), *more],
                          check=False, capture_output=True, text=True, timeout=120)


def pixels(n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, 16, 16)).astype(np.float32)


def labels_file(tmp: Path, lines: list[str], name: str = "labels.txt") -> Path:
    path = tmp / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def agent_profile(tmp: Path, port: int, *, name: str | None = None, path: Path | None = None,
             output_kind: str | None = None, input_shape: list[int] | None = None, offload: bool = False) -> Any:
    """An agent profile serving TASK from the store ``_import`` writes (``name``) or from a file (``path``)."""
    doc = profile_doc(tmp, None, api_port=port, samples=False)
    model: dict[str, Any] = {"input": {"name": "pixels" if input_shape is None else "input",
                                       "shape": input_shape or [-1, 3, 16, 16]}}
    model.update({"name": name} if name else {"path": str(path)})
    if output_kind is not None:
        model["output_kind"] = output_kind
    doc["models"] = {TASK: model}
    doc["offload"] = {TASK: {"mode": "threshold", "metric": "max_prob", "threshold": 0.5}} if offload else {}
    doc["broker"] = {"host": "127.0.0.1", "port": free_port()}  # nobody there: every answer is local
    return parse_profile(yaml.safe_dump(doc), str(tmp / "profile.yaml"), env={})


@contextmanager
def asking_a_worker(tmp: Path, broker: Mosquitto) -> Iterator[Callable[[InferRequest], InferReply | ErrorReply]]:
    """A real cloud worker serving the store at ``tmp``/state/models, and a call that asks it one request over MQTT."""
    settings = WorkerSettings(store=tmp / "state" / "models", broker=broker.settings, worker_id="w",
                              status_interval_s=0.2)
    with running_worker(settings, broker), client(broker, "caller") as caller:
        inbox = Inbox(caller)
        subscribe(caller, "test/replies")

        def ask(request: InferRequest) -> InferReply | ErrorReply:
            payload, props = encode_request(request, response_topic="test/replies")
            caller.publish(Topics().infer(request.task), payload, qos=1, properties=props)
            msg = inbox.get(timeout=20)
            return decode_reply(msg.payload, msg.properties)

        yield ask
