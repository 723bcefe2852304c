"""The reference worker as a test fixture helper: a cloud that answers with ``f(input)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from cloud.local.mosquitto import Mosquitto
from cloud.local.reference_worker import ReferenceWorker

Responder = ReferenceWorker


@contextmanager
def responding(broker: Mosquitto, answer: Callable[[np.ndarray], np.ndarray]) -> Iterator[ReferenceWorker]:
    """A connected reference worker (model name ``responder``) for the duration of the block."""
    worker = ReferenceWorker(answer, model_name="responder").start(broker.host, broker.port)
    try:
        yield worker
    finally:
        worker.stop()
