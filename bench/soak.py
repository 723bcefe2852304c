"""Soak: a steady mixed stream through the real daemons for minutes; memory and descriptors must not grow.

``fedge-agent run`` (threshold offload, samples kept, heartbeats every second)
and ``fedge-cloud serve`` (one worker) on a private broker. Four HTTP callers
send a steady stream of OIP requests, each with its own id; the confidence
threshold is set so about a third go to the cloud, and every tenth answer gets
a user's feedback label. Once a second the agent's RSS and open file
descriptors are read from /proc.

The baseline is the same process after warm-up (the first fifth of the run).
Goals: RSS growth from the end of warm-up to the end of the run <= 5 %; no
growth in the most descriptors open at once; 0 requests lost (no answer, or an
error); 0 answered twice or under another request's id.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agent.confidence import softmax
from agent.metrics import rss_mb
from agent.model_store import ModelStore
from agent.process_tree import stop
from agent.session import open_session
from bench.cloud_rig import served_cloud
from bench.results_file import Goal, bench_arguments, write_result
from bench.zoo_models import data_options, train_zoo
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.zoo.tasks import get_task

CALLERS, FEEDBACK_EVERY = 4, 10
FEDGE_AGENT = str(Path(sys.executable).with_name("fedge-agent"))
SECONDS, QUICK_SECONDS = 240.0, 12.0
WARMUP_SHARE = 0.2
OFFLOAD_SHARE = 0.35  # the edge model's least confident share of the inputs goes to the cloud


def _post(port: int, path: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(doc).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Stream:
    """The callers' tally: what was sent, what came back, and under which ids."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.answered: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.feedback = 0

    def caller(self, k: int, port: int, x: np.ndarray, y: np.ndarray, until: float) -> None:
        n = 0
        while time.monotonic() < until:
            row, rid = (k * 7919 + n) % len(x), f"soak-{k}-{n}"
            n += 1
            body = {"id": rid, "inputs": [{"name": "input", "shape": [1, 40], "datatype": "FP32",
                                           "data": x[row].tolist()}]}
            with self.lock:
                self.sent += 1
            try:
                status, doc = _post(port, "/v2/models/mnist1d/infer", body)
            except OSError as exc:
                with self.lock:
                    self.errors[type(exc).__name__] += 1
                continue
            with self.lock:
                if status != 200:
                    self.errors[str(doc.get("code", status))] += 1
                    continue
                self.answered[str(doc.get("id"))] += 1
                self.errors["wrong_id"] += doc.get("id") != rid
                self.sources["degraded" if doc["parameters"]["degraded"] else doc["parameters"]["source"]] += 1
            if n % FEEDBACK_EVERY == 0:
                status, _ = _post(port, "/v2/models/mnist1d/feedback", {"id": rid, "label": int(y[row])})
                with self.lock:
                    self.feedback += status == 200


def _threshold(store: ModelStore, x: np.ndarray, offload_share: float) -> float:
    """The confidence below which ``offload_share`` of ``x`` falls on the store's edge model."""
    session = open_session(store.get("mnist1d", "mnist1d-edge").model_path)
    return float(np.quantile(softmax(session.run(None, {"input": x})[0]).max(axis=1), offload_share))


def _agent_profile(work: Path, broker: Mosquitto, port: int, threshold: float) -> Path:
    path = work / "soak-agent.yaml"
    path.write_text(yaml.safe_dump({
        "device": {"id": "soak", "kind": "bench"},
        "models": {"mnist1d": {"name": "mnist1d-edge", "input": {"shape": [-1, 40]}}},
        "offload": {"mnist1d": {"mode": "threshold", "metric": "max_prob", "threshold": threshold,
                                "default_deadline_ms": 2000}},
        "broker": {"host": broker.host, "port": broker.port},
        "api": {"port": port},
        "storage": {"directory": str(work / "state"), "samples": {"enabled": True}},
        "metrics": {"heartbeat_interval_s": 1},
    }))
    return path


def _ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    time.sleep(1.0)  # the cloud's retained status, so offloading has begun
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the agent's API on port {port} did not become ready within {timeout:g} s")


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("soak", __doc__, argv, f"{QUICK_SECONDS:g} s instead of {SECONDS:g} s")
    seconds = QUICK_SECONDS if args.quick else SECONDS
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        work = Path(tmp)
        store = ModelStore(work / "store")
        train_zoo(store, "mnist1d", quick=True)
        data = get_task("mnist1d").load(data_options(True))
        port, threshold = free_port(), _threshold(store, data.x_test, OFFLOAD_SHARE)
        with served_cloud(store.root, broker, 1, work / "serve.log"):
            agent = subprocess.Popen([FEDGE_AGENT, "run", "--profile",
                                      str(_agent_profile(work, broker, port, threshold)), "--store", str(store.root)],
                                     stdout=(work / "agent.log").open("wb"), stderr=subprocess.STDOUT)
            try:
                _ready(port)
                stream, samples = Stream(), []
                until = time.monotonic() + seconds
                callers = [threading.Thread(target=stream.caller, args=(k, port, data.x_test, data.y_test, until))
                           for k in range(CALLERS)]
                started = time.monotonic()
                for thread in callers:
                    thread.start()
                while time.monotonic() < until:
                    time.sleep(1.0)
                    samples.append((time.monotonic() - started, rss_mb(agent.pid) or 0.0,
                                    len(os.listdir(f"/proc/{agent.pid}/fd"))))
                    print(f"soak {samples[-1][0]:5.0f} s: {stream.sent} requests, agent RSS {samples[-1][1]:.1f} MB,"
                          f" {samples[-1][2]} descriptors", flush=True)
                for thread in callers:
                    thread.join(30)
            finally:
                stop(agent)
    warm = [s for s in samples if s[0] <= seconds * WARMUP_SHARE] or samples[:1]
    tail = samples[-max(1, len(samples) // 10):]
    rss_warm, rss_end = warm[-1][1], statistics.median(s[1] for s in tail)
    # open HTTP connections come and go with the callers: compare the most seen in each window
    fd_warm, fd_end = max(s[2] for s in warm), max(s[2] for s in tail)
    answered = sum(stream.answered.values())
    duplicated = sum(n - 1 for n in stream.answered.values() if n > 1) + stream.errors["wrong_id"]
    lost = stream.sent - answered
    metrics = {"seconds": seconds, "requests": stream.sent, "answered": answered,
               "requests_per_s": round(stream.sent / seconds, 1), "sources": dict(stream.sources),
               "errors": {k: v for k, v in stream.errors.items() if v}, "feedback_labelled": stream.feedback,
               "rss_mb_after_warmup": rss_warm, "rss_mb_end": rss_end, "fds_after_warmup": fd_warm, "fds_end": fd_end,
               "samples": [{"t_s": round(t, 1), "rss_mb": r, "fds": f} for t, r, f in samples]}
    goals = {"rss_growth_after_warmup": Goal(round(rss_end / rss_warm - 1, 4), "<=", 0.05),
             "fd_growth": Goal(fd_end - fd_warm, "<=", 0), "lost": Goal(lost, "<=", 0),
             "duplicated": Goal(duplicated, "<=", 0)}
    params = {"callers": CALLERS, "feedback_every": FEEDBACK_EVERY, "warmup_share": WARMUP_SHARE,
              "offload_share": OFFLOAD_SHARE, "threshold": round(threshold, 4), "workers": 1, "quick": args.quick}
    path = write_result("soak", params, metrics, goals, results_dir=args.results_dir)
    print(f"soak: {stream.sent} requests in {seconds:g} s, {lost} lost, {duplicated} duplicated; agent RSS"
          f" {rss_warm:.1f} -> {rss_end:.1f} MB, descriptors {fd_warm} -> {fd_end}; {path}")
    return path


if __name__ == "__main__":
    main()
