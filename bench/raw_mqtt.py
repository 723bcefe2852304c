"""Raw paho-mqtt ping-pong through a private Mosquitto: the transport baseline.

Later benchmarks divide by these numbers, so this must be the best the
transport can do. Each case runs with TCP_NODELAY off and on (client sockets
and the broker's ``set_tcp_nodelay``); the faster setting is the baseline,
and it is the one ``agent.mqtt_client`` uses everywhere.

Goals (ratios within this run):
* ``qos1_over_qos0_p50`` <= 2.5: a QoS 1 round trip (two more PUBACKs) costs
  at most 2.5 times a QoS 0 one with the chosen setting. A Nagle/delayed-ACK
  stall makes it ~200x (seen here: 88 ms against 0.4 ms).
* ``nodelay_speedup_qos1_p50`` >= 1: the chosen setting is not slower than
  the other one for QoS 1 small payloads (it is the baseline by construction,
  this records by how much it wins).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.metrics import nearest_rank
from agent.mqtt_client import connect, new_client
from bench.results_file import Goal, bench_arguments, write_result
from cloud.local.mosquitto import Mosquitto

PING, PONG = "bench/ping", "bench/pong"


@dataclass(frozen=True)
class Case:
    qos: int
    payload_bytes: int


class PingPong:
    """Client A publishes a ping, client B echoes it, A times the round trip."""

    def __init__(self, broker: Mosquitto, nodelay: bool) -> None:
        self.a = new_client("bench-a", nodelay=nodelay)
        self.b = new_client("bench-b", nodelay=nodelay)
        self._pong = threading.Event()
        self._received = 0
        self._expected = 0
        self._all_in = threading.Event()
        self._qos = 0
        self.a.on_message = lambda *_: self._pong.set()
        self.b.on_message = self._on_ping
        for c in (self.a, self.b):
            connect(c, broker.host, broker.port)
        for c, topic in ((self.a, PONG), (self.b, PING)):
            subscribed = threading.Event()
            c.on_subscribe = lambda *_args, done=subscribed: done.set()
            c.subscribe(topic, qos=1)
            if not subscribed.wait(5.0):
                raise TimeoutError(f"no SUBACK for {topic}")
        self._warm()

    def _on_ping(self, c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._expected:
            self._received += 1
            if self._received >= self._expected:
                self._all_in.set()
        else:
            c.publish(PONG, msg.payload, qos=self._qos)

    def _warm(self) -> None:
        for _ in range(3):
            self.round_trips(Case(1, 16), 10)

    def round_trips(self, case: Case, count: int, before_each: Callable[[], object] | None = None) -> list[float]:
        """``count`` round-trip times in milliseconds; ``before_each`` runs inside each timing, before the ping."""
        self._qos = case.qos
        payload = b"\x00" * case.payload_bytes
        rtts = []
        for _ in range(count):
            self._pong.clear()
            start = time.perf_counter()
            if before_each is not None:
                before_each()
            self.a.publish(PING, payload, qos=case.qos)
            if not self._pong.wait(5.0):
                raise TimeoutError(f"no pong within 5 s ({case})")
            rtts.append((time.perf_counter() - start) * 1000)
        return rtts

    def one_way_rate(self, case: Case, count: int) -> float:
        """Messages per second from A to B, publishing as fast as paho allows."""
        self._received, self._expected = 0, count
        self._all_in.clear()
        payload = b"\x00" * case.payload_bytes
        start = time.perf_counter()
        for _ in range(count):
            self.a.publish(PING, payload, qos=case.qos)
        finished = self._all_in.wait(60.0)
        elapsed = time.perf_counter() - start
        self._expected = 0
        if not finished:
            raise TimeoutError(f"only {self._received}/{count} messages arrived ({case})")
        return count / elapsed

    def close(self) -> None:
        self.b.on_message = None
        for c in (self.a, self.b):
            c.disconnect()
            c.loop_stop()


def measure(nodelay: bool, cases: list[Case], round_trips: int, messages: int) -> dict[str, float]:
    """Round-trip percentiles and one-way rates for every case with one socket setting."""
    metrics: dict[str, float] = {}
    with Mosquitto(nodelay=nodelay) as broker:
        pp = PingPong(broker, nodelay)
        try:
            for case in cases:
                key = f"qos{case.qos}_{case.payload_bytes}B"
                rtts = pp.round_trips(case, round_trips)
                metrics[f"{key}_p50_ms"] = round(statistics.median(rtts), 4)
                metrics[f"{key}_p99_ms"] = round(nearest_rank(rtts, 99), 4)
                metrics[f"{key}_msgs_per_s"] = round(pp.one_way_rate(case, messages), 1)
        finally:
            pp.close()
    return metrics


def main(argv: list[str] | None = None) -> Path:
    args = bench_arguments("raw_mqtt", __doc__, argv, "a few hundred messages, for the smoke test")
    round_trips, messages = (100, 500) if args.quick else (3000, 5000)
    # With Nagle on, a QoS 1 round trip stalls ~90 ms: a tenth of the samples tell the story.
    samples = {False: max(10, round_trips // 10), True: round_trips}
    cases = [Case(qos, size) for qos in (0, 1) for size in (160, 16384)]
    by_setting = {}
    for nodelay in (False, True):
        print(f"raw_mqtt: TCP_NODELAY {'on' if nodelay else 'off'}: {len(cases)} cases x {samples[nodelay]} round trips")
        by_setting["nodelay" if nodelay else "nagle"] = measure(nodelay, cases, samples[nodelay], messages)
    best = min(by_setting, key=lambda s: by_setting[s]["qos1_160B_p50_ms"])
    other = "nagle" if best == "nodelay" else "nodelay"
    chosen = by_setting[best]
    metrics: dict[str, Any] = {"baseline_setting": best, **chosen, "by_setting": by_setting}
    goals = {
        "qos1_over_qos0_p50": Goal(round(chosen["qos1_160B_p50_ms"] / chosen["qos0_160B_p50_ms"], 3), "<=", 2.5),
        "nodelay_speedup_qos1_p50": Goal(
            round(by_setting[other]["qos1_160B_p50_ms"] / chosen["qos1_160B_p50_ms"], 3), ">=", 1.0
        ),
    }
    params = {"round_trips": samples[True], "round_trips_nagle": samples[False], "messages": messages,
              "payload_bytes": [160, 16384], "qos": [0, 1]}
    path = write_result("raw_mqtt", params, metrics, goals, results_dir=args.results_dir)
    for name in ("qos0_160B_p50_ms", "qos1_160B_p50_ms", "qos1_16384B_p99_ms", "qos1_160B_msgs_per_s"):
        print(f"  {name}: nagle {by_setting['nagle'][name]}  nodelay {by_setting['nodelay'][name]}")
    print(f"raw_mqtt: baseline = {best}; wrote {path}")
    return path


if __name__ == "__main__":
    main()
