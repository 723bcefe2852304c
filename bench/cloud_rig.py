"""`fedge-cloud serve` as a subprocess for benchmarks, and what its process tree costs.

The cloud benchmarks drive the real command, not the classes behind it, so
they measure what an operator runs (worker processes, the coordinator's
status loop) and keep working while serving internals change. Ready means the
retained cloud status counts every worker alive; stop is SIGTERM, as a service
manager would send.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.metrics import rss_mb
from agent.mqtt_client import connect, new_client
from agent.process_tree import children
from agent.protocol import Topics
from cloud.local.mosquitto import Mosquitto

FEDGE_CLOUD = str(Path(sys.executable).with_name("fedge-cloud"))
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0.0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"; fields[11], [12] are utime, stime
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class ServedCloud:
    """A running ``fedge-cloud serve``: its PID and a reading of its tree's CPU and memory."""

    process: subprocess.Popen[bytes]
    workers: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def usage(self) -> dict[str, Any]:
        """CPU seconds so far and RSS now, for the coordinator and its children (workers) apart."""
        kids = children(self.pid)
        return {"coordinator_cpu_s": cpu_seconds(self.pid), "workers_cpu_s": sum(cpu_seconds(k) for k in kids),
                "coordinator_rss_mb": rss_mb(self.pid) or 0.0, "workers_rss_mb": sum(rss_mb(k) or 0.0 for k in kids),
                "processes": 1 + len(kids)}


def _wait_ready(broker: Mosquitto, topics: Topics, workers: int, process: subprocess.Popen[bytes],
                timeout: float) -> None:
    ready = threading.Event()

    def on_status(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if json.loads(msg.payload).get("workers_alive") == workers:
                ready.set()
        except (ValueError, AttributeError):
            pass

    probe = new_client(f"bench-probe-{process.pid}")
    probe.on_message = on_status
    connect(probe, broker.host, broker.port)
    try:
        probe.subscribe(topics.cloud_status, qos=1)
        waited = 0.0
        while not ready.wait(0.5):
            waited += 0.5
            if process.poll() is not None or waited >= timeout:
                why = f"exited with {process.returncode}" if process.poll() is not None else f"{timeout:.0f} s"
                raise RuntimeError(f"fedge-cloud serve with {workers} workers did not report them all alive ({why})")
    finally:
        probe.disconnect()
        probe.loop_stop()


@contextmanager
def served_cloud(store: Path, broker: Mosquitto, workers: int, log_file: Path, *, prefix: str = "fedge/v1",
                 timeout: float = 90.0, extra: tuple[str, ...] = ()) -> Iterator[ServedCloud]:
    """Start ``fedge-cloud serve`` on ``broker``, wait until all workers are alive, SIGTERM it afterwards."""
    argv = [FEDGE_CLOUD, "serve", "--broker", broker.url, "--workers", str(workers), "--store", str(store),
            "--prefix", prefix, "--registry", str(log_file.with_suffix(".registry.db")), *extra]
    with log_file.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(broker, Topics(prefix), workers, process, timeout)
        yield ServedCloud(process, workers)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
