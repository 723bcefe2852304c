"""The Flower ClientApp a device runs in its SuperNode: fine-tune the edge model on the device's own samples.

Raw inputs and labels never leave the device: the reply carries weights and a
few numbers. The sample store is opened read-only (the agent keeps writing it).
A device with fewer usable samples than its ``min-samples`` declines the round
with an error reply whose reason the server logs; so does one whose store is
missing or whose weights do not fit the architecture. ``dp_app`` is the same app
with Flower's client-side fixed clipping (``fixedclipping_mod``), for runs with
differential privacy.

Node config (``flower-supernode --node-config``; agent/federated/supernode.py
writes it from the profile): ``store-path``, ``device-id``, ``min-samples``,
``local-epochs``, ``batch-size``. Round config (the server's): ``task``,
``arch`` (JSON), ``classes``, ``learning-rate``, ``temperature``,
``distill-weight``, ``local-epochs`` (0: the device's own), ``server-round``,
and ``proximal-mu`` when the strategy is FedProx.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from agent.federated.architectures import ArchConfig, build
from agent.federated.training import Recipe, fine_tune, float_state, load_float_state, usable
from agent.samples import SampleStore

log = logging.getLogger(__name__)
#: Error codes of a declined round (Flower's own codes are small numbers; these say "fedge declined").
DECLINED_FEW_SAMPLES, DECLINED_NO_STORE, DECLINED_BAD_WEIGHTS = 100, 101, 102


class Declined(Exception):
    """The device does not take part in this round; ``code`` and the message go back to the server."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def train_on_device(message: Message, context: Context) -> Message:
    """One round of local fine-tuning; the reply holds the new weights and ``num-examples``."""
    return train_with(message, context.node_config, context.node_id)


def train_with(message: Message, node: Mapping[str, Any], node_id: int) -> Message:
    """``train_on_device`` with the node config given (a simulation gives each virtual device its own store)."""
    config = message.content["config"]
    device = str(node.get("device-id", node_id))
    try:
        arrays, metrics = _train(node, config, message.content.array_records["arrays"], zlib.crc32(device.encode()))
    except Declined as exc:
        log.info("device %s declines round %s: %s", device, config.get("server-round"), exc)
        return Message(Error(code=exc.code, reason=f"{device} declined: {exc}"), reply_to=message)
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


def _train(node: Mapping[str, Any], config: Any, arrays: ArrayRecord, device_seed: int
           ) -> tuple[ArrayRecord, MetricRecord]:
    task = str(config["task"])
    store_path = Path(str(node.get("store-path", "")))
    try:
        store = SampleStore.reader(store_path)
    except FileNotFoundError as exc:
        raise Declined(DECLINED_NO_STORE, str(exc)) from None
    try:
        data = usable(store.training_set(task))
    finally:
        store.close()
    needed = int(node.get("min-samples", 1))
    if len(data.labels) < needed:
        raise Declined(DECLINED_FEW_SAMPLES, f"{len(data.labels)} usable samples of task {task}, {needed} needed"
                                             " (federated.min_samples)")
    model = build(ArchConfig.from_dict(json.loads(str(config["arch"]))))
    try:
        load_float_state(model, {name: array.numpy() for name, array in arrays.items()})
    except ValueError as exc:
        raise Declined(DECLINED_BAD_WEIGHTS, str(exc)) from None
    epochs = int(config.get("local-epochs", 0)) or int(node.get("local-epochs", 1))
    recipe = Recipe(epochs=epochs, batch_size=int(node.get("batch-size", 32)),
                    learning_rate=float(config.get("learning-rate", 0.005)),
                    temperature=float(config.get("temperature", 2.0)),
                    distill_weight=float(config.get("distill-weight", 0.8)),
                    proximal_mu=float(config.get("proximal-mu", 0.0)),
                    seed=device_seed + int(config.get("server-round", 0)))
    began = time.monotonic()
    result = fine_tune(model, data, int(config["classes"]), recipe)
    seconds = time.monotonic() - began
    weights = ArrayRecord({name: Array(value) for name, value in float_state(model).items()})
    metrics = MetricRecord({
        "num-examples": result.examples, "held-out": result.held_out,
        "held-out-accuracy": result.held_out_accuracy, "cloud-agreement": result.cloud_agreement,
        "user-labelled": result.user_labelled, "train-loss": result.loss, "train-seconds": seconds,
    })
    return weights, metrics


app = ClientApp()
app.train()(train_on_device)
dp_app = ClientApp(mods=[fixedclipping_mod])
dp_app.train()(train_on_device)
