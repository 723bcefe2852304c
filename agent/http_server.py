"""fedge's HTTP servers: a threaded server on a background thread, and the one way its handlers respond."""

from __future__ import annotations

import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class ResponseHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1, every response with its length (and no body for HEAD)."""

    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:  # the client must not send its next request on this connection
            self.send_header("Connection", "close")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class BackgroundHttpServer(ThreadingHTTPServer):
    """``start`` serves on a daemon thread, ``stop`` shuts it down; callers who hang up are one log line."""

    daemon_threads = True
    #: socketserver's default backlog is 5: a burst of callers connecting at once found the queue full and
    #: was reset (130 of 384 requests from 64 callers). The kernel caps it at net.core.somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        super().__init__(address, handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        """Each accepted connection with TCP_NODELAY on.

        A response goes out in two writes (headers, then body); with Nagle on, the body waits for
        the client's delayed ACK of the headers: 40 ms on every keep-alive request.
        """
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller that hung up before its answer is one line in the log, not socketserver's traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.info("http caller %s:%s went away before its answer (%s)", client_address[0], client_address[1],
                     error.strerror or type(error).__name__)
        else:
            log.error("http request from %s:%s failed", client_address[0], client_address[1], exc_info=error)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name=f"fedge-http-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)
