"""`fedge-cloud serve`: start N worker processes, watch them, and publish the retained cloud status.

Agents read ``{prefix}/cloud/status`` before offloading: healthy with room,
they offload; overloaded or absent, they answer locally. The coordinator's
Last Will turns the status unhealthy if it dies; a worker that dies is
restarted, and its in-flight requests fall back to the agents' local answers.

It also keeps the device registry: heartbeats and status (with its Last Will)
of every agent go to the registry named by the settings.

Per task the status carries the queue depth (summed over live workers) and
p50/p99 of the time requests spend in a worker (the worst live worker's, so
agents back off when any worker is slow).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
from dataclasses import replace
from typing import Any

import paho.mqtt.client as mqtt

from agent.mqtt_client import connect, new_client
from agent.protocol import Topics
from cloud.devices import DeviceListener
from cloud.registry import open_registry
from cloud.serving.worker import WorkerSettings, check_settings, run_worker

log = logging.getLogger(__name__)
OVERLOADED_AT = 0.8  # share of the total queue capacity in use


class Coordinator:
    """Owns the worker processes and the retained status."""

    def __init__(self, template: WorkerSettings, workers: int, status_interval_s: float = 1.0, *,
                 username: str | None = None, password: str | None = None) -> None:
        """``username``/``password``: the coordinator's own broker user (default: the workers')."""
        check_settings(template)  # fail here, clearly, not in N processes
        self.template = template
        self.topics = Topics(template.topic_prefix)
        self.status_interval_s = status_interval_s
        self._context = multiprocessing.get_context("spawn")
        self._workers = [self._spawn(i) for i in range(workers)]
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}  # worker id -> (received, report)
        self._stop = threading.Event()
        username, password = (username, password) if username else (template.username, template.password)
        self._client = new_client(f"fedge-coordinator-{template.worker_id}", tls=template.tls, username=username,
                                  password=password)
        self._devices = None if template.registry_url is None else DeviceListener(
            open_registry(template.registry_url), template.host, template.port, template.topic_prefix,
            client_id=f"fedge-devices-{template.worker_id}", tls=template.tls, username=username, password=password)
        self._client.will_set(self.topics.cloud_status, json.dumps({"healthy": False, "overloaded": True}),
                              qos=1, retain=True)
        self._client.on_message = self._on_report
        self._client.on_connect = lambda c, *_: c.subscribe(f"{template.topic_prefix}/cloud/workers/+", qos=0)

    def _spawn(self, index: int) -> Any:
        settings = replace(self.template, worker_id=f"{self.template.worker_id}-{index}")
        process = self._context.Process(target=run_worker, args=(settings,), name=settings.worker_id, daemon=True)
        process.start()
        return process

    def _on_report(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            report = json.loads(msg.payload)
            self._reports[str(report["worker_id"])] = (time.monotonic(), report)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored an unreadable worker report on %s", msg.topic)

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._workers]

    def status(self) -> dict[str, Any]:
        """Workers count as alive once they report (so they are subscribed), and while they keep reporting."""
        fresh_after = time.monotonic() - 3 * max(self.status_interval_s, self.template.status_interval_s)
        running = {p.name for p in self._workers if p.is_alive()}
        ready = {w: r for w, (seen, r) in self._reports.items() if w in running and seen >= fresh_after}
        depth = sum(int(r.get("queue_depth", 0)) for r in ready.values())
        capacity = max(1, len(ready) * self.template.max_queue)
        return {"healthy": bool(ready), "overloaded": depth >= OVERLOADED_AT * capacity, "workers_alive": len(ready),
                "queue_depth": depth, "tasks": task_status(list(ready.values())),
                "served": {w: r.get("served", 0) for w, (_, r) in self._reports.items()}, "sent_at": time.time()}

    def run(self) -> None:
        """Publish status every interval, restarting workers that died, until ``stop``."""
        connect(self._client, self.template.host, self.template.port, keepalive=self.template.keepalive_s)
        if self._devices is not None:
            self._devices.start()
        while True:
            for i, process in enumerate(self._workers):
                if not process.is_alive() and not self._stop.is_set():
                    log.warning("worker %s exited with %s; starting a new one", process.name, process.exitcode)
                    self._workers[i] = self._spawn(i)
            self._client.publish(self.topics.cloud_status, json.dumps(self.status()), qos=1, retain=True)
            if self._stop.wait(self.status_interval_s):
                break
        for process in self._workers:
            process.terminate()
        for process in self._workers:
            process.join(10)
        down = json.dumps({"healthy": False, "overloaded": True, "workers_alive": 0, "sent_at": time.time()})
        self._client.publish(self.topics.cloud_status, down, qos=1, retain=True).wait_for_publish(5)
        self._client.disconnect()
        self._client.loop_stop()
        if self._devices is not None:
            self._devices.stop()
            self._devices.registry.close()

    def stop(self) -> None:
        self._stop.set()


def task_status(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: queue depth summed over workers, the worst worker's p50/p99, and decisions summed."""
    tasks: dict[str, dict[str, Any]] = {}
    for report in reports:
        try:
            for task, doc in (report.get("tasks") or {}).items():
                _fold(tasks.setdefault(task, {"queue_depth": 0, "p50_ms": None, "p99_ms": None, "decisions": {}}), doc)
        except (AttributeError, TypeError, ValueError):
            log.warning("ignored the unreadable task section of worker %s's report", report.get("worker_id"))
    return tasks


def _fold(into: dict[str, Any], doc: dict[str, Any]) -> None:
    into["queue_depth"] += int(doc.get("queue_depth") or 0)
    for key in ("p50_ms", "p99_ms"):
        if doc.get(key) is not None:
            into[key] = max(float(doc[key]), into[key] or 0.0)
    for model, reasons in (doc.get("decisions") or {}).items():
        counts = into["decisions"].setdefault(model, {})
        for reason, n in reasons.items():
            counts[reason] = counts.get(reason, 0) + int(n)
