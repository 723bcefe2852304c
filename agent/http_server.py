"""fedge's HTTP/1.1 server: one asyncio loop does the socket work, worker threads answer in groups.

Why not the standard library's threading server, which fedge used first: a
thread per connection pays a wake-up and a GIL hand-off at each end of the
model's queue for every request, and at 32 callers that, not the model, set
the pace (2,900 req/s on the edge model where Triton served 3,500; now 7,000,
bench/results/serving_peers.json). Here one loop thread reads and writes every
connection, httptools (the C parser uvicorn uses, a 0.4 MB wheel) parses, and
whatever requests arrived since a worker last looked go to it as one list: one
hand-off per group (a lone request with the workers idle is answered on the
loop). The app answers each ``Exchange`` from any thread, in any order; a
connection's answers go out in the order its requests came.

A request refused on its headers (``HttpApp.refuse``: no such endpoint, a body
over the limit) is answered without its body being kept: the body is read and
dropped where its length is known and small enough, or the connection closes
after the answer, so a client still sending sees the answer, not a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import json
import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

import httptools

from agent.decimal_text import decimal

log = logging.getLogger(__name__)

#: A refused body is read and dropped up to this size, so the client sees the answer; past it the connection closes.
DISCARD_LIMIT = 64 << 20
#: Requests one connection may have in the works at once (HTTP pipelining) before the server stops reading it.
PIPELINE_DEPTH = 16
_STOP = object()  # a worker's signal to leave


@dataclass
class Request:
    """One parsed HTTP request; ``headers`` keyed in lower case (a repeated header keeps its last value)."""

    method: str
    path: str  # the request target as sent, query included
    headers: dict[str, str]
    body: bytes = b""

    @property
    def declared_size(self) -> int | None:
        """The body length ``Content-Length`` declares; None where the request declares none."""
        length = self.headers.get("content-length")
        return decimal(length) if length is not None else None


@dataclass(frozen=True)
class Response:
    """One answer; ``close`` ends the connection after it."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    close: bool = False


class HttpApp(Protocol):
    """What the server serves."""

    def refuse(self, request: Request) -> Response | None:
        """On the loop, from the headers alone (``request.body`` is empty): the answer to a request not worth its body."""

    def work(self, items: list[Any]) -> None:
        """On a worker thread: answer these ``Exchange`` objects (now or later), and do what the app ``post``-ed."""


class Exchange:
    """One request and its one answer, which ``respond`` hands to the connection from any thread."""

    __slots__ = ("_connection", "_responded", "request")

    def __init__(self, connection: _Connection, request: Request) -> None:
        self._connection = connection
        self.request = request
        self._responded = False

    @property
    def responded(self) -> bool:
        return self._responded

    def respond(self, response: Response) -> None:
        """Send ``response`` (RuntimeError on a second answer: the client expects one)."""
        if self._responded:
            raise RuntimeError(f"{self.request.method} {self.request.path} was answered already")
        self._responded = True
        self._connection.server.deliver(self, response)

    @property
    def connection(self) -> _Connection:
        return self._connection


def _head(status: int, content_type: str, length: int, headers: Mapping[str, str], close: bool, date: str) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Date: {date}", "Server: fedge",
             f"Content-Type: {content_type}", f"Content-Length: {length}"]
    lines.extend(f"{key}: {value}" for key, value in headers.items())
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Connection(asyncio.Protocol):
    """One client connection, on the loop thread: httptools calls the ``on_*`` methods as it parses."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._pending: deque[tuple[Exchange, Response | None, bool]] = deque()  # in request order
        self._request: Request | None = None
        self._body: list[bytes] = []
        self._refusal: Response | None = None
        self._closing = False
        self._paused = False

    # -- asyncio -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """TCP_NODELAY on: with Nagle on, a response written after the client's last ACK waits 40 ms for the next."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.server.connections.discard(self)
        if any(response is None for _, response, _ in self._pending):
            log.info("http caller %s went away before its answer (%s)", self.peer,
                     type(exc).__name__ if exc is not None else "connection closed")

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer_now(_bad_request("protocol upgrades are not served here"))
        except httptools.HttpParserError as exc:
            if not self._closing:  # not an error raised after this connection already answered and closed
                self._answer_now(_bad_request(f"malformed HTTP request: {exc}"))

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._request = Request("", "", {})
        self._body = []
        self._refusal = None

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.path += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._request is not None
        self._request.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        request.method = self._parser.get_method().decode("latin-1")
        refusal = self.server.app.refuse(request)
        if refusal is None:
            if request.headers.get("expect", "").lower() == "100-continue":
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        size = request.declared_size
        if request.headers.get("expect") or (size is None and "transfer-encoding" in request.headers) \
                or (size is not None and size > DISCARD_LIMIT):
            # the body may never come (the client waits for 100 Continue), or is not worth reading to its end
            self._answer_now(refusal)
            raise httptools.HttpParserCallbackError("answered before the body")  # stop parsing this connection
        self._refusal = refusal  # the body is read and dropped, then answered

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        keep_alive = bool(self._parser.should_keep_alive())
        exchange = Exchange(self, request)
        if self._refusal is not None:
            exchange._responded = True
            self._pending.append((exchange, self._refusal, keep_alive))
            self._flush()
            return
        request.body = b"".join(self._body)
        self._body = []
        self._pending.append((exchange, None, keep_alive))
        if len(self._pending) >= PIPELINE_DEPTH and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self.server.arrived(exchange)

    # -- answers -----------------------------------------------------------------------------
    def answered(self, exchange: Exchange, response: Response) -> None:
        """On the loop: ``exchange``'s answer is here; send what is next in line."""
        for i, (pending, waiting, keep_alive) in enumerate(self._pending):
            if pending is exchange and waiting is None:
                self._pending[i] = (exchange, response, keep_alive)
                break
        self._flush()

    def _flush(self) -> None:
        while self._pending and self._pending[0][1] is not None:
            exchange, response, keep_alive = self._pending.popleft()
            assert response is not None
            close = response.close or not keep_alive
            body = b"" if exchange.request.method == "HEAD" else response.body
            self._write(_head(response.status, response.content_type, len(response.body), response.headers, close,
                              self.server.date()) + body)
            if close:
                self._close()
                return
        if self._paused and len(self._pending) < PIPELINE_DEPTH and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _answer_now(self, response: Response) -> None:
        """Answer after the requests already in the works, then close.

        This request could not be read to its end, so nothing after it is read at all.
        """
        self._closing = True
        refused = Exchange(self, Request("", "", {}))
        refused._responded = True
        self._pending.append((refused, dataclasses.replace(response, close=True), False))
        self._flush()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()


def _bad_request(message: str) -> Response:
    return Response(HTTPStatus.BAD_REQUEST, json.dumps({"error": message, "code": "bad_request"}).encode(), close=True)


class HttpServer:
    """Binds at construction (so a taken port fails there); ``start`` serves, ``stop`` shuts down.

    ``workers`` threads take the requests: more lets one group be decoded while another waits for the model.
    """

    def __init__(self, app: HttpApp, host: str, port: int, *, workers: int = 2, name: str = "http") -> None:
        self.app = app
        self.name = name
        self.workers = workers
        self._socket = socket.create_server((host, port), backlog=socket.SOMAXCONN, reuse_port=False)
        self._loop = asyncio.new_event_loop()
        self._work: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._outbox: deque[tuple[Exchange, Response]] = deque()
        self._wake_pending = False
        self._arrivals: list[Exchange] = []  # read in this pass of the loop
        self._working = [False] * workers  # each worker's own flag: whether it is answering now
        self.connections: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._date = (0, "")

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port the kernel chose, where 0 was asked)."""
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def date(self) -> str:
        """The Date header's value, formatted once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]

    # -- any thread ------------------------------------------------------------------------------
    def submit(self, item: object) -> None:
        """Hand ``item`` (an Exchange, or what the app wants back on a worker) to the next free worker."""
        self._work.put(item)

    def deliver(self, exchange: Exchange, response: Response) -> None:
        """Queue an answer for the loop, waking it once for however many answers pile up meanwhile."""
        self._outbox.append((exchange, response))
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped, the connection with it
                self._loop.call_soon_threadsafe(self._send_answers)

    def call_at(self, when: float, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` on the loop at ``when`` (time.monotonic, asyncio's clock); returns its cancel.

        The cancel works from any thread and lets go of ``callback`` (and all it holds) at once, not at ``when``.
        """
        timer: list[asyncio.TimerHandle] = []
        with contextlib.suppress(RuntimeError):  # stopped
            self._loop.call_soon_threadsafe(lambda: timer.append(self._loop.call_at(when, callback)))

        def on_loop() -> None:  # queued behind the line above: the timer is set by the time this runs
            for handle in timer:
                handle.cancel()

        def cancel() -> None:
            with contextlib.suppress(RuntimeError):  # stopped: the timer went with the loop
                self._loop.call_soon_threadsafe(on_loop)

        return cancel

    # -- the loop's and the workers' ------------------------------------------------------------
    def arrived(self, exchange: Exchange) -> None:
        """On the loop: a request is read. Those read in one pass of the loop are dispatched together."""
        self._arrivals.append(exchange)
        if len(self._arrivals) == 1:
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Hand what arrived to the workers; a request alone, with every worker idle, is answered here.

        Nothing else waits for the loop then, and a hand-off to a worker and back (two thread wake-ups)
        costs more than most answers.
        """
        arrivals, self._arrivals = self._arrivals, []
        if len(arrivals) == 1 and not any(self._working) and self._work.empty():
            self._run(arrivals)
            return
        for exchange in arrivals:
            self._work.put(exchange)

    def _send_answers(self) -> None:
        self._wake_pending = False  # before taking answers: one delivered from now on schedules another pass
        while self._outbox:
            exchange, response = self._outbox.popleft()
            exchange.connection.answered(exchange, response)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(self._loop.create_server(lambda: _Connection(self), sock=self._socket))
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for connection in list(self.connections):
                connection._close()
            self._loop.run_until_complete(asyncio.sleep(0))  # let the transports close
            self._loop.close()

    def _worker(self, index: int) -> None:
        """Take everything queued, up to a stop signal: one per worker, so another's stays for it to find."""
        while True:
            item = self._work.get()
            self._working[index] = True
            items: list[Any] = []
            while item is not _STOP:
                items.append(item)
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
            if items:
                self._run(items)
            self._working[index] = False
            if item is _STOP:
                return

    def _run(self, items: list[Any]) -> None:
        try:
            self.app.work(items)
        except Exception:  # one group's failure is its own 500s, not a dead worker
            log.exception("%s: answering %d request(s) failed", self.name, len(items))
            for item in items:
                if isinstance(item, Exchange) and not item.responded:
                    item.respond(Response(HTTPStatus.INTERNAL_SERVER_ERROR,
                                          b'{"error": "internal error (in the server log)", "code": "internal"}'))

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._serve, name=f"fedge-{self.name}-{self.port}", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, args=(i,), name=f"fedge-{self.name}-worker-{i}",
                                           daemon=True) for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        if self._threads:
            self._loop.call_soon_threadsafe(self._loop.stop)
            for _ in range(self.workers):
                self._work.put(_STOP)
            for thread in self._threads:
                thread.join(5)
            self._threads = []
        else:
            self._loop.close()
        self._socket.close()
