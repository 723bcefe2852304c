"""Shared pieces for the release tests: tiny real ONNX classifiers, a signed cloud store, agents that follow it."""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from agent.agent import Agent
from agent.model_store import ModelStore, StoredModel
from agent.profile import parse_profile
from agent.profile.schema import Profile
from cloud.cli import main
from cloud.local.mosquitto import Mosquitto
from cloud.releases.keys import init_keys
from cloud.releases.signing import sign_stored
from cloud.store import publish
from tests.agent_support import profile_doc

TASK, NAME, FEATURES, CLASSES = "mnist1d", "mnist1d-edge", 40, 10


def linear_onnx(path: Path, weights: np.ndarray, *, features: int = FEATURES) -> Path:
    """A linear classifier input[N,features] -> logits[N,10]: a real ONNX model that builds in milliseconds."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, CLASSES])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@dataclass(frozen=True)
class CloudSide:
    """A cloud store: v1 (base), v2 (base + a little noise: agrees), v3 (shuffled weights: disagrees), signed."""

    store: ModelStore
    keys: Path
    base: np.ndarray

    @property
    def private_key(self) -> Path:
        return self.keys / "release.key"

    @property
    def public_key(self) -> Path:
        return self.keys / "release.pub"

    def stored(self, version: int) -> StoredModel:
        return self.store.verified(TASK, NAME, version)


def linear_cloud_store(root: Path) -> Path:
    """A store with one small real cloud model for mnist1d (a linear classifier, built in milliseconds)."""
    weights = np.random.default_rng(0).normal(size=(FEATURES, CLASSES))
    root.mkdir(parents=True)
    publish(ModelStore(root), TASK, f"{TASK}-cloud", linear_onnx(root.parent / "cloud.onnx", weights),
            metrics={"test_accuracy": 0.5})
    return root


def make_cloud(root: Path) -> CloudSide:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(FEATURES, CLASSES))
    good = base + rng.normal(scale=0.02, size=base.shape)
    bad = rng.permutation(base.ravel()).reshape(base.shape)
    store = ModelStore(root / "cloud-store")
    keys = root / "keys"
    init_keys(keys)
    for version, weights in enumerate((base, good, bad), start=1):
        publish(store, TASK, NAME, linear_onnx(root / f"v{version}.onnx", weights), metrics={})
        sign_stored(store, TASK, NAME, version, keys / "release.key")
    return CloudSide(store, keys, base)


def add_signed_version(cloud: CloudSide, onnx_file: Path) -> int:
    """Publish ``onnx_file`` as the next signed version of TASK/NAME in ``cloud``'s store; its number."""
    version = publish(cloud.store, TASK, NAME, onnx_file, metrics={}).manifest.version
    sign_stored(cloud.store, TASK, NAME, version, cloud.private_key)
    return version


def install_locally(cloud: CloudSide, agent_store: Path, *versions: int) -> None:
    """Copy released versions into an agent's store, as a first install would."""
    for version in versions:
        shutil.copytree(cloud.stored(version).directory, agent_store / TASK / NAME / str(version))


def follower_profile(tmp: Path, broker: Mosquitto, cloud: CloudSide, *, device: str = "test-dev",
                     group: str = "lab", gate: dict[str, Any] | None = None) -> Profile:
    """An agent profile that follows the releases of ``group``, verified with the cloud's public key."""
    doc = profile_doc(tmp, broker)
    doc["device"]["id"] = device
    doc["api"]["enabled"] = False
    doc["updates"] = {"enabled": True, "public_key_file": str(cloud.public_key), "group": group,
                      "artifact_timeout_s": 20, "gate": gate or {"min_samples": 16}}
    return parse_profile(yaml.safe_dump(doc), f"{device}.yaml", env={})


def recent_traffic(agent: Agent, cloud: CloudSide, n: int = 64) -> np.ndarray:
    """Store ``n`` offloaded samples the cloud labelled (labels = the base model's classes)."""
    x = np.random.default_rng(1).normal(size=(n, FEATURES)).astype(np.float32)
    soft = np.eye(CLASSES, dtype=np.float32)[(x @ cloud.base).argmax(axis=1)]
    assert agent.samples is not None
    for i in range(n):
        agent.samples.add(f"seen-{i}", TASK, x[i:i + 1], soft[i:i + 1])
    return x


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cloud(*args: str) -> Ran:
    """`fedge-cloud ARGS` through its real entry point, in this process (a subprocess pays torch's import)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return Ran(code, out.getvalue(), err.getvalue())
