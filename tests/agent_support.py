"""Shared pieces for agent tests: a small trained model store and profiles pointing at a test broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agent.confidence import softmax
from agent.model_store import ModelStore
from agent.profile import parse_profile
from agent.profile.schema import Profile
from agent.session import open_session
from cloud.local.mosquitto import Mosquitto

# Kept free of torch imports at module level: the no-torch test imports make_profile from here.
TRAIN_SIZE, TEST_SIZE = 2000, 1000


def train_small_zoo(root: Path) -> ModelStore:
    """MNIST-1D edge and cloud models, trained briefly: enough to be confident on some inputs only."""
    from cloud.zoo.pipeline import train_and_publish
    from cloud.zoo.tasks import DataOptions

    store = ModelStore(root)
    data = DataOptions(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
    train_and_publish(store, "mnist1d", "edge", epochs=8, data=data, progress=False)
    train_and_publish(store, "mnist1d", "cloud", epochs=6, data=data, progress=False)
    return store


def cloud_answer(store: ModelStore):  # type: ignore[no-untyped-def]
    """The cloud model as a responder function: input rows -> probabilities."""
    session = open_session(store.get("mnist1d", "mnist1d-cloud").model_path)
    return lambda x: softmax(session.run(None, {"input": x})[0])


def profile_doc(tmp: Path, broker: Mosquitto | None, *, offload: dict[str, Any] | None = None,
                samples: bool = True, api_port: int = 0, batching: dict[str, Any] | None = None,
                federated: dict[str, Any] | None = None) -> dict[str, Any]:
    """A profile serving mnist1d from the store at ``tmp/state/models``, offloading through ``broker``."""
    doc: dict[str, Any] = {
        "device": {"id": "test-dev", "kind": "test-box"},
        "hardware": {"execution_providers": [{"type": "cpu"}], "intra_op_threads": 1},
        "models": {"mnist1d": {"name": "mnist1d-edge", "input": {"name": "input", "shape": [-1, 40]},
                               "batching": batching or {"max_batch_size": 8, "max_queue_delay_ms": 1}}},
        "api": {"enabled": True, "host": "127.0.0.1", "port": api_port or 8080},
        "storage": {"directory": str(tmp / "state"), "samples": {"enabled": samples}},
        "federated": federated or {"enabled": False},
        "metrics": {"enabled": True, "heartbeat_interval_s": 1},
    }
    if broker is not None:
        doc["broker"] = {"host": broker.host, "port": broker.port}
    if offload is not None:
        doc["offload"] = {"mnist1d": offload}
    return doc


def make_profile(tmp: Path, broker: Mosquitto | None, **options: Any) -> Profile:
    """``profile_doc`` validated as the agent would."""
    return parse_profile(yaml.safe_dump(profile_doc(tmp, broker, **options)), "test-profile.yaml", env={})


def sample_inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D test inputs and labels (the same generator the models were trained with)."""
    from cloud.zoo.tasks import DataOptions, get_task

    data = get_task("mnist1d").load(DataOptions(train_size=TRAIN_SIZE, test_size=TEST_SIZE))
    rng = np.random.default_rng(seed)
    index = rng.permutation(len(data.y_test))[:n]
    return data.x_test[index], data.y_test[index]
