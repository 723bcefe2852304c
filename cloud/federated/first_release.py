"""The fleet's first edge release in the closed loop: the edge architecture trained on a few labelled rows, int8.

A new deployment rarely ships an edge model as good as it could be: the cloud model
was trained on what had labels, the first edge model often on a small part of it.
What the fleet then sees and offloads, labelled by the cloud, is what federated
rounds distil into it; ``fedge-cloud fl loop`` (and ``make demo``) start from such a
release so the rounds have something to show. It is compressed the way every
federated release is (cloud/federated/release.py) and judged on the same held-out rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from agent.federated.architectures import build
from agent.model_store import ModelStore, StoredModel
from cloud.federated.evaluation import held_out
from cloud.federated.release import edge_variant, publish_variant
from cloud.zoo.tasks import DataOptions, get_task, model_name
from cloud.zoo.train import seed_everything, train_classifier

MAX_DROP_POINTS = 0.5


def first_edge_release(store: ModelStore, task: str, rows: int, *, seed: int = 0, progress: bool = False
                       ) -> StoredModel:
    """Train the edge model on the first ``rows`` training rows, quantize it and publish it into ``store``.

    The store must hold the task's cloud model (the held-out rows are judged against it).
    """
    spec, data = get_task(task), DataOptions()
    train, _ = spec.load(data).validation_split()
    if not 0 < rows <= len(train.y_train):
        raise ValueError(f"the first edge release trains on 1 to {len(train.y_train)} rows, not {rows}")
    config = spec.models["edge"]
    generator = seed_everything(seed)
    model = build(config)
    train_classifier(model, train.x_train[:rows], train.y_train[:rows], epochs=spec.epochs["edge"],
                     generator=generator, description=f"{task}/edge on {rows} rows", progress=progress)
    evaluation = held_out(store, task, data)
    with tempfile.TemporaryDirectory() as tmp:
        chosen = edge_variant(model, config, evaluation, MAX_DROP_POINTS, Path(tmp))
        if chosen is None:  # the fp32 export is always within its own budget
            raise RuntimeError(f"no variant of the {task} edge model was within {MAX_DROP_POINTS} points of fp32")
        return publish_variant(store, task, model_name(task, "edge"), chosen, evaluation, config, model,
                               recipe={"trained": {"epochs": spec.epochs["edge"], "seed": seed, "train_rows": rows,
                                                   **data.split_record()},
                                       "quantization": chosen.name, "max_accuracy_drop_points": MAX_DROP_POINTS},
                               parent=None)
