"""Every MQTT topic fedge uses, built from one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "fedge/v1"
DEFAULT_SHARE_GROUP = "workers"
#: The retained payloads of a device status topic; ``OFFLINE`` is also the agent's Last Will.
ONLINE, OFFLINE = b"online", b"offline"


def check_segment(value: str, what: str) -> str:
    """A topic segment: not empty, no '/', and no MQTT wildcard."""
    if not value or any(c in value for c in "/+#\0"):
        raise ValueError(f"{what} {value!r} must be non-empty and contain no '/', '+', '#'")
    return value


def publishable(topic: str) -> bool:
    """Whether a client may publish to ``topic``: not empty, no wildcard, no NUL, not a ``$`` (broker) topic.

    A request's Response Topic is the requester's to choose; one that breaks these rules is
    no place to send a reply (and ``$SYS/...`` is the broker's own).
    """
    return bool(topic) and not topic.startswith("$") and not any(c in topic for c in "+#\0") and \
        len(topic.encode("utf-8", "surrogatepass")) <= 65535


@dataclass(frozen=True)
class Topics:
    """Topic names under ``prefix`` (e.g. ``fedge/v1``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or self.prefix.startswith("/") or self.prefix.endswith("/") or any(
            c in self.prefix for c in "+#\0"
        ):
            raise ValueError(f"topic prefix {self.prefix!r} must not be empty, start or end with '/', or hold wildcards")

    def infer(self, task: str) -> str:
        return f"{self.prefix}/infer/{check_segment(task, 'task')}"

    @property
    def infer_filter(self) -> str:
        """Every task's requests."""
        return f"{self.prefix}/infer/+"

    def shared_infer(self, group: str = DEFAULT_SHARE_GROUP) -> str:
        """The shared subscription workers use, so the broker spreads requests among them."""
        return f"$share/{check_segment(group, 'share group')}/{self.infer_filter}"

    def task_of(self, topic: str) -> str | None:
        """The task of an inference request topic, or None when it is not one."""
        head = f"{self.prefix}/infer/"
        if not topic.startswith(head):
            return None
        task = topic[len(head):]
        return task if task and "/" not in task else None

    def device_reply(self, device_id: str) -> str:
        return f"{self.prefix}/device/{check_segment(device_id, 'device id')}/reply"

    def default_reply(self, task: str) -> str:
        """Where replies go when a request names no Response Topic."""
        return f"{self.prefix}/replies/{check_segment(task, 'task')}"

    def device_status(self, device_id: str) -> str:
        return f"{self.prefix}/device/{check_segment(device_id, 'device id')}/status"

    def device_heartbeat(self, device_id: str) -> str:
        return f"{self.prefix}/device/{check_segment(device_id, 'device id')}/heartbeat"

    @property
    def device_status_filter(self) -> str:
        """Every device's status (and Last Will)."""
        return f"{self.prefix}/device/+/status"

    @property
    def device_heartbeat_filter(self) -> str:
        """Every device's heartbeat."""
        return f"{self.prefix}/device/+/heartbeat"

    def device_of(self, topic: str) -> str | None:
        """The device id of a ``{prefix}/device/{id}/...`` topic, or None when it is not one."""
        head = f"{self.prefix}/device/"
        if not topic.startswith(head):
            return None
        device = topic[len(head):].split("/", 1)[0]
        return device or None

    @property
    def cloud_status(self) -> str:
        return f"{self.prefix}/cloud/status"

    def worker_report(self, worker_id: str) -> str:
        """A cloud worker's load report to the coordinators."""
        return f"{self.prefix}/cloud/workers/{check_segment(worker_id, 'worker id')}"

    @property
    def worker_reports(self) -> str:
        """Every worker's load report."""
        return f"{self.prefix}/cloud/workers/+"

    def coordinator_presence(self, coordinator_id: str) -> str:
        """A coordinator's retained ``online``/``offline`` (its Last Will)."""
        return f"{self.prefix}/cloud/coordinators/{check_segment(coordinator_id, 'coordinator id')}"

    @property
    def coordinator_presences(self) -> str:
        return f"{self.prefix}/cloud/coordinators/+"

    @property
    def federated_window(self) -> str:
        """The cloud's retained federated training window: agents run their Flower SuperNode while it is open."""
        return f"{self.prefix}/federated/window"

    def manifest(self, task: str) -> str:
        return f"{self.prefix}/models/{check_segment(task, 'task')}/manifest"

    def release(self, task: str, group: str) -> str:
        """Where the retained release of ``task`` for a device group lives."""
        return f"{self.manifest(task)}/{check_segment(group, 'device group')}"

    def artifact(self, task: str, name: str, version: int) -> str:
        """Where a model version's bytes are retained."""
        task, name = check_segment(task, "task"), check_segment(name, "model name")
        return f"{self.prefix}/models/{task}/artifact/{name}/{version}"
