"""The agent's local HTTP API: KServe Open Inference Protocol v2, feedback and Prometheus metrics.

Built on the standard library's threading HTTP server: it parses HTTP for us,
costs no extra install on a device, and each request runs on its own thread
while ONNX Runtime releases the GIL. Bodies reuse the wire protocol's OIP codec,
so MQTT and HTTP callers see the same errors.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from agent.protocol import ErrorCode, InferReply, InferRequest, Limits, ProtocolError, decode_request
from agent.protocol.oip import reply_document

log = logging.getLogger(__name__)

STATUS_OF = {
    ErrorCode.BAD_REQUEST: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNSUPPORTED_DTYPE: HTTPStatus.BAD_REQUEST,
    ErrorCode.SHAPE_MISMATCH: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNKNOWN_TASK: HTTPStatus.NOT_FOUND,
    ErrorCode.OVERLOADED: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.EXPIRED: HTTPStatus.GATEWAY_TIMEOUT,
    ErrorCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}


class InferenceService(Protocol):
    """What the HTTP API needs from the agent."""

    limits: Limits

    def ready(self) -> bool: ...

    def model_metadata(self, name: str) -> dict[str, Any] | None: ...

    def infer(self, request: InferRequest) -> InferReply: ...

    def feedback(self, request_id: str, label: int) -> bool: ...

    def metrics_text(self) -> tuple[bytes, str]: ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        log.debug("http %s", format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode())

    def _error(self, status: int, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> None:
        self._json(status, {"error": message, "code": code.value})

    def _body(self) -> bytes | None:
        """The request body, or None after answering 411/413 (the body is never read past the limit)."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return None
        size = int(length)
        if size > self.server.service.limits.max_payload_bytes:
            self.close_connection = True
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {size} bytes is over the {self.server.service.limits.max_payload_bytes}-byte limit",
            )
            return None
        return self.rfile.read(size)

    def do_GET(self) -> None:  # noqa: N802 - the base class names it so
        service = self.server.service
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts == ["v2", "health", "live"]:
            self._json(HTTPStatus.OK, {"live": True})
        elif parts == ["v2", "health", "ready"]:
            ready = service.ready()
            self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"ready": ready})
        elif len(parts) == 3 and parts[:2] == ["v2", "models"]:
            meta = service.model_metadata(parts[2])
            if meta is None:
                self._error(HTTPStatus.NOT_FOUND, f"unknown model {parts[2]!r}", ErrorCode.UNKNOWN_TASK)
            else:
                self._json(HTTPStatus.OK, meta)
        elif parts == ["metrics"]:
            body, content_type = service.metrics_text()
            self._send(HTTPStatus.OK, body, content_type)
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path!r}")

    def do_POST(self) -> None:  # noqa: N802 - the base class names it so
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v2", "models"] or parts[3] not in ("infer", "feedback"):
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path!r}")
            return
        body = self._body()
        if body is None:
            return
        if parts[3] == "infer":
            self._infer(parts[2], body)
        else:
            self._feedback(body)

    def _infer(self, name: str, body: bytes) -> None:
        service = self.server.service
        if service.model_metadata(name) is None:
            self._error(HTTPStatus.NOT_FOUND, f"unknown model {name!r}", ErrorCode.UNKNOWN_TASK)
            return
        try:
            request = decode_request(name, body, None, service.limits)
            reply = service.infer(request)
        except ProtocolError as exc:
            self._error(STATUS_OF[exc.code], exc.message, exc.code)
            return
        self._json(HTTPStatus.OK, reply_document(reply))

    def _feedback(self, body: bytes) -> None:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}")
            return
        request_id, label = (doc.get("id"), doc.get("label")) if isinstance(doc, dict) else (None, None)
        if not isinstance(request_id, str) or isinstance(label, bool) or not isinstance(label, int):
            self._error(HTTPStatus.BAD_REQUEST, 'feedback body must be {"id": "<request id>", "label": <int>}')
            return
        try:
            found = self.server.service.feedback(request_id, label)
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        if not found:
            self._error(HTTPStatus.NOT_FOUND, f"no stored sample or recent answer for request {request_id!r} (evicted, or never kept)")
            return
        self._json(HTTPStatus.OK, {"id": request_id, "label": label})


class ApiServer(ThreadingHTTPServer):
    """The HTTP server bound to one agent; ``start`` serves on a background thread."""

    daemon_threads = True

    def __init__(self, service: InferenceService, host: str = "127.0.0.1", port: int = 8080) -> None:
        super().__init__((host, port), _Handler)
        self.service = service
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="fedge-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)
