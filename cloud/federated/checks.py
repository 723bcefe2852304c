"""What the server checks in every reply before a strategy aggregates it.

Flower's strategies check that replies are consistent with each other, and one
inconsistent reply fails the whole run. Here each reply is judged on its own
against the weights the server sent: the same names and shapes, every number
finite, a positive ``num-examples``. A reply that fails is dropped with its
reason logged, and the round goes on with the rest. Error replies are sorted
into devices that declined (fedge's ClientApp says why) and devices that failed
(unreachable, crashed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message

from agent.federated.client_app import DECLINED_BAD_WEIGHTS, DECLINED_FEW_SAMPLES, DECLINED_NO_STORE

log = logging.getLogger(__name__)
DECLINE_CODES = frozenset({DECLINED_FEW_SAMPLES, DECLINED_NO_STORE, DECLINED_BAD_WEIGHTS})


@dataclass
class Sorted:
    """A round's replies, sorted: kept for aggregation, declined by the device, dropped by the server."""

    kept: list[Message] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)  # reasons
    dropped: list[str] = field(default_factory=list)


def problem_with(reply: Message, sent: ArrayRecord) -> str | None:
    """Why a reply with content cannot be aggregated, or None when it can."""
    content = reply.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return "it needs one ArrayRecord and one MetricRecord"
    arrays = next(iter(content.array_records.values()))
    metrics = next(iter(content.metric_records.values()))
    examples = metrics.get("num-examples")
    if not isinstance(examples, (int, float)) or not examples > 0:
        return f"num-examples is {examples!r}, not a positive number"
    if set(arrays.keys()) != set(sent.keys()):
        return f"its weights are named {sorted(arrays.keys())[:3]}..., not as sent"
    for name, array in arrays.items():
        values, expected = array.numpy(), sent[name].numpy()
        if values.shape != expected.shape:
            return f"weight {name} has shape {list(values.shape)}, not {list(expected.shape)}"
        if not np.isfinite(values).all():
            return f"weight {name} holds NaN or infinite values"
    return None


def sort_replies(replies: list[Message], sent: ArrayRecord) -> Sorted:
    """Keep what can be aggregated; log a reason for every other reply."""
    out = Sorted()
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            reason = reply.error.reason or f"error code {reply.error.code}"
            if reply.error.code in DECLINE_CODES:
                out.declined.append(reason)
                log.info("node %s declined: %s", node, reason)
            else:
                out.dropped.append(reason)
                log.warning("node %s failed this round: %s", node, reason)
            continue
        problem = problem_with(reply, sent)
        if problem is None:
            out.kept.append(reply)
        else:
            out.dropped.append(f"node {node}: {problem}")
            log.warning("dropped the reply of node %s: %s", node, problem)
    return out
