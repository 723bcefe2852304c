"""What the operator dashboard shows, as one JSON document read from the registry.

The registry already holds the fleet's state (devices from their heartbeats and Last Will,
model versions and their rollout history, federated rounds), whoever feeds it: a coordinator
or `fedge-cloud listen`. The page polls this document; nothing here writes.
"""

from __future__ import annotations

from typing import Any

from cloud.registry import Registry, RoundRecord

ROUNDS_SHOWN = 50  # the newest federated rounds
EVENTS_SHOWN = 8  # rollout events per model name


def snapshot(registry: Registry, now: float) -> dict[str, Any]:
    """Devices, models with their rollout history, and federated rounds; ``now`` dates the heartbeats' ages."""
    return {"at": now, "devices": _devices(registry, now), "models": _models(registry),
            "rounds": [_round(r) for r in registry.rounds()[-ROUNDS_SHOWN:]]}


def _devices(registry: Registry, now: float) -> list[dict[str, Any]]:
    out = []
    for d in registry.devices():
        beat: dict[str, Any] = next((e["data"] for e in registry.device_history(d.device_id, 4) if e["event"] == "heartbeat"), {})
        degraded: dict[str, int] = {}
        for task_counts in (beat.get("degraded") or {}).values():
            for cause, n in (task_counts.items() if isinstance(task_counts, dict) else ()):
                degraded[cause] = degraded.get(cause, 0) + int(n)
        out.append({"id": d.device_id, "kind": d.kind, "group": d.group, "online": d.online, "models": d.models,
                    "offload_rate": d.offload_rate, "p99_ms": d.p99_ms, "degraded": degraded,
                    "last_seen_s": max(0.0, now - d.last_seen), "rss_mb": beat.get("rss_mb")})
    return out


def _models(registry: Registry) -> list[dict[str, Any]]:
    out = []
    records = registry.models()
    for task, name in sorted({(m.task, m.name) for m in records}):
        versions = sorted((m for m in records if (m.task, m.name) == (task, name)), key=lambda m: m.version)
        history = registry.model_history(task, name)[-EVENTS_SHOWN:]
        out.append({"task": task, "name": name,
                    "versions": [{"version": m.version, "state": m.state.value,
                                  "accuracy": m.metrics.get("test_accuracy", m.metrics.get("validation_accuracy")),
                                  "feedback_accuracy": m.metrics.get("feedback_accuracy")} for m in versions],
                    "events": [{"version": e.version, "state": e.state.value, "reason": e.reason, "at": e.at}
                               for e in history]})
    return out


def _round(r: RoundRecord) -> dict[str, Any]:
    return {"run": r.run, "task": r.task, "round": r.round, "participants": r.participants, "declined": r.declined,
            "dropped": r.dropped, "accuracy": r.accuracy, "offload_rate": r.offload_rate, "release": r.release,
            "seconds": r.seconds, "at": r.at}
