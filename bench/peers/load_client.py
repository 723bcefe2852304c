"""The one load client every server gets: a closed loop of keep-alive HTTP callers in a process of its own.

``measure`` starts ``python -m bench.peers.load_client`` for one measurement
point, so the client's GIL and CPU are its own and never the bench's or a
server's. Its ``concurrency`` threads each hold one keep-alive connection
(TCP_NODELAY) and send the same pre-built request (the body as tritonclient
encodes it, see bodies.py) back to back over a plain socket. Every answer is
checked, and tritonclient's own parser reads a sample of them: a server that
answers what a Triton client cannot read counts errors, not fast requests.
After a warm-up on every connection all threads start at once; requests that
end inside the window are counted, and the client's CPU over the window is
reported, so its share of the 2 cores is on record.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

HEADER = "Inference-Header-Content-Length"
PARSE_EVERY = 16  # answers between two full parses by tritonclient on one connection


@dataclass(frozen=True)
class Point:
    """What one measurement sends: where, which body, how many in flight, for how long."""

    port: int
    path: str
    headers: dict[str, str]
    body_file: str
    output: str
    output_shape: list[int]
    concurrency: int
    seconds: float
    warmup: int = 3


@dataclass(frozen=True)
class Measured:
    """Latencies of the requests answered inside the window, and what went wrong."""

    latencies_ms: list[float]
    seconds: float
    errors: int
    first_error: str | None
    client_cpu_s: float

    @property
    def per_s(self) -> float:
        return len(self.latencies_ms) / self.seconds


class LoadClientError(Exception):
    """The client process failed; the message carries its stderr."""


def measure(point: Point, timeout: float = 300.0) -> Measured:
    """Run one point in a fresh client process."""
    done = subprocess.run([sys.executable, "-m", "bench.peers.load_client"], input=json.dumps(point.__dict__),
                          capture_output=True, text=True, timeout=timeout + point.seconds, check=False)
    if done.returncode != 0:
        raise LoadClientError(f"load client failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    doc = json.loads(done.stdout)
    return Measured(doc["latencies_ms"], doc["seconds"], doc["errors"], doc["first_error"], doc["client_cpu_s"])


class _Caller:
    """One connection's loop over a raw socket: the request's bytes are built once, answers read by length.

    http.client cost 130-160 us of CPU a request (tritonclient's parser 60-90 more): a third of a core at
    2,000 requests/s, on a machine with two. This costs ~40. Every answer is checked (status, framing,
    output size or name); tritonclient parses the first on each connection and every PARSE_EVERY-th after.
    """

    def __init__(self, point: Point, body: bytes) -> None:
        from tritonclient.http import InferenceServerClient  # type: ignore[import-untyped]  # here: only the client process needs it

        self.point = point
        head = "".join(f"{k}: {v}\r\n" for k, v in point.headers.items())
        self.request = (f"POST {point.path} HTTP/1.1\r\nHost: 127.0.0.1:{point.port}\r\n"
                        f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body
        self.binary = HEADER in point.headers
        self.output_bytes = 4 * prod(point.output_shape)  # FP32
        self.output_name = f'"{point.output}"'.encode()
        self.parse = InferenceServerClient.parse_response_body
        self.sock = self._connect()
        self.buffer = bytearray()
        self.answered = 0
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error: str | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.point.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _read_until(self, size: int) -> None:
        while len(self.buffer) < size:
            chunk = self.sock.recv(max(1 << 16, size - len(self.buffer)))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk

    def _answer(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of the next response on the connection."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._read_until(len(self.buffer) + 1)
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        del self.buffer[:end + 4]
        if headers.get("transfer-encoding", "").lower() == "chunked":  # KServe's binary answers
            return int(lines[0].split()[1]), headers, self._chunks()
        if "content-length" not in headers:
            raise ValueError(f"an answer with neither Content-Length nor chunks ({lines[0]}; {headers})")
        size = int(headers["content-length"])
        self._read_until(size)
        body = bytes(self.buffer[:size])
        del self.buffer[:size]
        return int(lines[0].split()[1]), headers, body

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._read_until(len(self.buffer) + 1)
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line

    def _chunks(self) -> bytes:
        """A chunked body (RFC 9112 7.1), trailers dropped."""
        parts = []
        while size := int(self._line().split(b";")[0], 16):
            self._read_until(size + 2)
            parts.append(bytes(self.buffer[:size]))
            del self.buffer[:size + 2]
        while self._line():  # trailers, up to the empty line
            pass
        return b"".join(parts)

    def _check(self, status: int, headers: dict[str, str], body: bytes) -> None:
        if status != 200:
            raise ValueError(f"HTTP {status}: {body[:300]!r}")
        length = headers.get(HEADER.lower())
        if self.answered % PARSE_EVERY == 0:
            out = self.parse(body, header_length=int(length) if length else None).as_numpy(self.point.output)
            if out is None or list(out.shape) != self.point.output_shape:
                raise ValueError(f"output {self.point.output!r}: {None if out is None else out.shape},"
                                 f" expected {self.point.output_shape}")
        elif self.binary:
            if length is None or len(body) != int(length) + self.output_bytes:
                raise ValueError(f"binary answer of {len(body)} bytes, JSON header {length}: expected"
                                 f" {self.output_bytes} bytes of output")
        elif self.output_name not in body:
            raise ValueError(f"JSON answer without output {self.point.output!r}: {body[:200]!r}")

    def once(self) -> bool:
        """One request, answered and checked (True) or failed (False, counted; the connection is renewed)."""
        try:
            self.sock.sendall(self.request)
            status, headers, body = self._answer()
            self._check(status, headers, body)
            self.answered += 1
            if headers.get("connection", "").lower() == "close":
                self._reconnect()
            return True
        except Exception as exc:  # noqa: BLE001  # any failure of a request is a counted error, not a crash
            self.errors += 1
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"[:500]
            self._reconnect()
            return False

    def _reconnect(self) -> None:
        self.sock.close()
        self.buffer.clear()
        self.sock = self._connect()

    def run(self, start: threading.Barrier, window: list[float]) -> None:
        for _ in range(self.point.warmup):
            self.once()
        start.wait()
        end = window[1]
        while True:
            sent = time.perf_counter()
            if sent >= end:
                break
            ok = self.once()
            done = time.perf_counter()
            if ok and done <= end:
                self.latencies.append((done - sent) * 1000)
        self.sock.close()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(point: Point) -> dict[str, Any]:
    body = Path(point.body_file).read_bytes()
    callers = [_Caller(point, body) for _ in range(point.concurrency)]
    window = [0.0, 0.0]

    def open_window() -> None:  # runs once, when every caller is warm
        window[0] = time.perf_counter()
        window[1] = window[0] + point.seconds
        window.append(_cpu_s())

    start = threading.Barrier(point.concurrency, action=open_window)
    threads = [threading.Thread(target=c.run, args=(start, window)) for c in callers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = min(time.perf_counter(), window[1]) - window[0]
    errors = [c.first_error for c in callers if c.first_error]
    return {"latencies_ms": [round(v, 4) for c in callers for v in c.latencies], "seconds": seconds,
            "errors": sum(c.errors for c in callers), "first_error": errors[0] if errors else None,
            "client_cpu_s": _cpu_s() - window[2]}


if __name__ == "__main__":
    json.dump(run(Point(**json.loads(sys.stdin.read()))), sys.stdout)
