"""`fedge-cloud serve`: start N worker processes, watch them, and publish the retained cloud status.

Agents read ``{prefix}/cloud/status`` before offloading: healthy with room,
they offload; overloaded or absent, they answer locally. Several serve hosts
may share one broker (more machines in the same share group): each one's
coordinator folds every fresh worker report it hears, its own workers' and the
other hosts', into the same whole-cloud status (reports.py), so whichever
publishes last is right. The status is published with a Message Expiry
Interval of three status intervals: when no coordinator refreshes it any more,
the broker drops it and agents see no status, which they treat as "cloud
unavailable". A coordinator's own liveness is its retained
``{prefix}/cloud/coordinators/{id}`` (``online``; ``offline`` as its Last
Will and on a clean stop), so one host going away never marks the cloud down.

A worker that dies is restarted, and its in-flight requests fall back to the
agents' local answers. The coordinator also keeps the registry: devices'
heartbeats and status (cloud.fleet.devices) and, every ``metrics_every`` status
intervals, the served models' live run-time EWMAs per batch size.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes

from agent.manifest import ManifestError
from agent.model_store import ModelStore
from agent.mqtt_client import connect, new_client
from agent.protocol import OFFLINE, ONLINE, Topics
from agent.protocol.properties import WireProperties
from cloud.dashboard.server import open_dashboard
from cloud.fleet.devices import DeviceListener
from cloud.registry import Registry, open_registry
from cloud.serving.reports import ModelKey, WorkerReports, cloud_status, live_metrics
from cloud.serving.served import require_served
from cloud.serving.worker import WorkerSettings, run_worker
from cloud.sigint import sigint_ignored

log = logging.getLogger(__name__)
OFFLINE_KEPT_S = 24 * 3600  # how long a stopped instance's retained offline mark stays on the broker
STATUS_LIFETIMES = 3  # status intervals a status (and a worker's report) stays valid without a refresh
METRICS_EVERY = 10  # status intervals between writes of live model metrics to the registry


class Coordinator:
    """Owns the worker processes, the retained status and the registry connection."""

    def __init__(self, template: WorkerSettings, workers: int, status_interval_s: float = 1.0, *,
                 username: str | None = None, password: str | None = None, metrics_every: int = METRICS_EVERY,
                 dashboard: tuple[str, int] | None = None) -> None:
        """Check what would be served, open the registry and the dashboard's port; workers start in ``run``.

        ``username``/``password``: the coordinator's own broker user (default: the workers').
        ``dashboard``: (host, port) of the operator dashboard (DashboardUnavailable when it cannot listen).
        ``template.worker_id`` names this serve instance on the broker (unique per host and process).
        """
        self.template = template
        self.topics = Topics(template.topic_prefix)
        self.status_interval_s = status_interval_s
        self.status_expiry_s = math.ceil(STATUS_LIFETIMES * status_interval_s)
        self.metrics_every = metrics_every
        self.presence_topic = self.topics.coordinator_presence(template.worker_id)
        self._count = workers
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[Any] = []
        self._reports = WorkerReports(STATUS_LIFETIMES * max(status_interval_s, template.status_interval_s))
        self._written: dict[ModelKey, dict[str, float]] = {}  # live metrics last written to the registry
        self._stop = threading.Event()
        self._registry: Registry | None = None if template.registry_url is None else open_registry(
            template.registry_url)
        try:  # fail here, clearly, not in N processes
            require_served(ModelStore(template.store), self._registry, template.models)
        except BaseException:
            self._close_registry()
            raise
        own = replace(template.broker, username=username, password=password) if username else template.broker
        self._client = new_client(f"fedge-coordinator-{template.worker_id}", own)
        self._client.will_set(self.presence_topic, OFFLINE, qos=1, retain=True,
                              properties=_offline_expiry(PacketTypes.WILLMESSAGE))
        self._client.on_message = self._on_report
        self._client.on_connect = self._on_connect
        self._devices = None if self._registry is None else DeviceListener(
            self._registry, own, template.topic_prefix, client_id=f"fedge-devices-{template.worker_id}")
        self._dashboard = None
        if dashboard is not None:
            try:
                self._dashboard = open_dashboard(self._registry, *dashboard)
            except BaseException:
                self._close_registry()
                raise

    def _spawn(self, index: int) -> Any:
        settings = replace(self.template, worker_id=f"{self.template.worker_id}-{index}")
        process = self._context.Process(target=run_worker, args=(settings,), name=settings.worker_id, daemon=True)
        with sigint_ignored():  # a Ctrl-C while it imports and loads would print its traceback: it stops on SIGTERM
            process.start()
        return process

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not reason.is_failure:  # after every (re)connect
            client.subscribe(self.topics.worker_reports, qos=0)
            client.publish(self.presence_topic, ONLINE, qos=1, retain=True)

    def _on_report(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._reports.add(msg.payload)
        except ValueError as exc:
            log.warning("ignored an unreadable worker report on %s: %s", msg.topic, exc)

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._workers]

    def status(self) -> dict[str, Any]:
        """The cloud status from every fresh worker report.

        That is this host's workers once they report (so they are subscribed) and while they run, and
        other serve hosts' workers while they keep reporting.
        """
        gone = {p.name for p in self._workers if not p.is_alive()}  # a killed worker's last report is still fresh
        return cloud_status(self._reports.fresh(exclude=gone), self.template.max_queue)

    def run(self) -> None:
        """Start the workers, then publish the status every interval, restarting workers that die, until ``stop``.

        Whatever happens (the broker refusing us, a signal, a bug), everything started is stopped again.
        """
        try:
            broker = self.template.broker
            connect(self._client, broker.host, broker.port, keepalive=broker.keepalive_s)
            if self._devices is not None:
                self._devices.start()
            if self._dashboard is not None:
                self._dashboard.start()
                log.info("dashboard on http://%s:%d/", *self._dashboard.address)
            self._workers = [self._spawn(i) for i in range(self._count)]
            log.info("started %d workers (pids %s)", self._count, self.worker_pids)
            intervals = 0
            while True:
                for i, process in enumerate(self._workers):
                    if not process.is_alive() and not self._stop.is_set():
                        self._workers[i] = self._spawn(i)
                        log.warning("worker %s (pid %s) exited with %s; started a new one (pid %s)", process.name,
                                    process.pid, process.exitcode, self._workers[i].pid)
                self._publish_status(self.status())
                intervals += 1
                if intervals % self.metrics_every == 0:
                    self._write_metrics()
                if self._stop.wait(self.status_interval_s):
                    break
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    def _publish_status(self, doc: dict[str, Any]) -> mqtt.MQTTMessageInfo:
        props = WireProperties.publish(content_type="application/json")
        props.set("MessageExpiryInterval", self.status_expiry_s)
        return self._client.publish(self.topics.cloud_status, json.dumps(doc), qos=1, retain=True, properties=props)

    def _write_metrics(self) -> None:
        """Each served model version's live run-time EWMAs into the registry, when they changed."""
        if self._registry is None:
            return
        for (task, name, version), metrics in live_metrics(self._reports.fresh()).items():
            if self._written.get((task, name, version)) == metrics:
                continue
            try:
                if self._registry.model(task, name, version) is None:  # served from the store, not yet registered
                    self._registry.add_model(task, name, version, metrics=self._manifest_metrics(task, name, version))
                self._registry.update_model_metrics(task, name, version, metrics)
                self._written[(task, name, version)] = metrics
            except Exception:  # a registry outage must not stop the status; the next round tries again
                log.exception("could not write the live metrics of %s/%s v%s", task, name, version)

    def _manifest_metrics(self, task: str, name: str, version: int) -> dict[str, float]:
        """The metrics the model was published with (another host may serve a version this store lacks)."""
        try:
            return dict(ModelStore(self.template.store).get(task, name, version).manifest.metrics)
        except (LookupError, ManifestError, OSError):
            return {}

    # -- stopping -----------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Ordered cleanup; every step runs even when one before it fails."""
        steps: list[Callable[[], None]] = [self._stop_workers, self._say_goodbye, self._disconnect]
        if self._devices is not None:
            steps.append(self._devices.stop)
        if self._dashboard is not None:
            steps.append(self._dashboard.stop)
        steps.append(self._close_registry)
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("stopping the coordinator: %s failed", step.__name__)

    def _stop_workers(self) -> None:
        for process in self._workers:
            process.terminate()
        for process in self._workers:
            process.join(10)

    def _say_goodbye(self) -> None:
        """Mark this coordinator offline.

        The status left behind counts only other hosts' workers, so it says unhealthy only when no
        other host's workers are fresh.
        """
        if not self._client.is_connected():
            return
        self._client.publish(self.presence_topic, OFFLINE, qos=1, retain=True,
                             properties=_offline_expiry(PacketTypes.PUBLISH)).wait_for_publish(5)
        self._publish_status(self.status()).wait_for_publish(5)

    def _disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _close_registry(self) -> None:
        if self._registry is not None:
            self._registry.close()


def _offline_expiry(packet_type: int) -> WireProperties:
    """An instance's retained ``offline`` mark, which expires after a day.

    Instance ids are host-pid, so without an expiry every restart would leave one more on the broker forever.
    """
    props = WireProperties(packet_type)
    props.set("MessageExpiryInterval", OFFLINE_KEPT_S)
    return props
