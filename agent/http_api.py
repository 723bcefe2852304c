"""The agent's local HTTP API: KServe Open Inference Protocol v2, feedback and Prometheus metrics.

Built on the standard library's threading HTTP server: it parses HTTP for us,
costs no extra install on a device, and each request runs on its own thread
while ONNX Runtime releases the GIL. Bodies reuse the wire protocol's OIP codec,
so MQTT and HTTP callers see the same errors.
"""

from __future__ import annotations

import functools
import json
import logging
from contextlib import AbstractContextManager
from http import HTTPStatus
from importlib import metadata
from typing import Any, Protocol

from agent.decimal_text import decimal
from agent.feeds import check_input_names
from agent.http_server import BackgroundHttpServer, ResponseHandler
from agent.protocol import ErrorCode, InferReply, InferRequest, Limits, ProtocolError, binary, oip
from agent.protocol.binary import binary_outputs, encode_reply, split_body
from agent.protocol.codec import decode_document

log = logging.getLogger(__name__)

STATUS_OF = {
    ErrorCode.BAD_REQUEST: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNSUPPORTED_DTYPE: HTTPStatus.BAD_REQUEST,
    ErrorCode.SHAPE_MISMATCH: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNKNOWN_TASK: HTTPStatus.NOT_FOUND,
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.OVERLOADED: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.EXPIRED: HTTPStatus.GATEWAY_TIMEOUT,
    ErrorCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}


#: A refused body is read and dropped up to this size (so the client sees the answer), in at most this time.
DISCARD_LIMIT, DISCARD_TIMEOUT_S = 64 << 20, 10.0

#: The one method each endpoint takes (`_endpoint` names them; each is served by ``_Handler._<endpoint>``).
ALLOWED = {"server": "GET", "live": "GET", "ready": "GET", "metrics": "GET", "model": "GET", "model_ready": "GET",
           "infer": "POST", "feedback": "POST"}
_FIXED = {("v2",): "server", ("v2", "health", "live"): "live", ("v2", "health", "ready"): "ready",
          ("metrics",): "metrics"}
_PER_MODEL = {"ready": "model_ready", "infer": "infer", "feedback": "feedback"}


def _endpoint(path: str) -> tuple[str | None, str, str | None]:
    """The endpoint a path names, the model name in it ("" where none) and the version it asks for (None: any).

    Per model: ``/v2/models/{name}[/versions/{version}][/ready|/infer|/feedback]``; None for no endpoint.
    """
    parts = tuple(path.split("?", 1)[0].strip("/").split("/"))
    if parts in _FIXED:
        return _FIXED[parts], "", None
    if len(parts) < 3 or parts[:2] != ("v2", "models") or not parts[2]:
        return None, "", None
    name, rest, version = parts[2], parts[3:], None
    if rest[:1] == ("versions",):
        if len(rest) < 2 or not rest[1]:
            return None, "", None
        version, rest = rest[1], rest[2:]
    if not rest:
        return "model", name, version
    return (_PER_MODEL.get(rest[0]) if len(rest) == 1 else None), name, version


@functools.cache
def server_metadata() -> dict[str, Any]:
    """OIP v2 server metadata; looked up on first use, not at start (finding the version scans installed packages)."""
    try:
        version = metadata.version("fedge")
    except metadata.PackageNotFoundError:  # run from a source tree
        version = "unknown"
    return {"name": "fedge-agent", "version": version, "extensions": ["binary_tensor_data"]}


class InferenceService(Protocol):
    """What the HTTP API needs from the agent."""

    limits: Limits

    def ready(self) -> bool: ...

    def model_metadata(self, name: str) -> dict[str, Any] | None: ...

    def infer(self, request: InferRequest) -> InferReply: ...

    def admission(self, name: str) -> AbstractContextManager[object]: ...

    def feedback(self, request_id: str, label: int, task: str | None = None) -> bool: ...

    def metrics_text(self) -> tuple[bytes, str]: ...


class _Handler(ResponseHandler):
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def _json(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, oip.dumps(doc), headers=headers)

    def _error(self, status: int, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST,
               headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message, "code": code.value}, headers)

    def _declared_size(self) -> int | None:
        """The body length the headers declare; None where they declare none (or nonsense)."""
        length = self.headers.get("Content-Length")
        return decimal(length) if length is not None else None

    def _discard_body(self) -> None:
        """Read and drop the body of a request refused before reading it, up to DISCARD_LIMIT bytes.

        Closing a socket with unread bytes in it resets the connection, and a client still sending
        (urllib, requests) then sees a broken pipe instead of the answer. Where the whole body was
        read, the connection stays usable; otherwise it closes after the answer.
        """
        left = self._declared_size()
        if left is None:  # no body, or one whose end is unknown (chunked, a nonsense length): not readable here
            if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                self.close_connection = True
            return
        if left > DISCARD_LIMIT:
            self.close_connection = True
            return
        self.connection.settimeout(DISCARD_TIMEOUT_S)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:  # a client that stalls mid-body
            pass
        self.connection.settimeout(self.timeout)
        if left:
            self.close_connection = True

    def _over_limit(self, size: int) -> bool:
        return size > self.server.service.limits.max_payload_bytes

    def _refuse_too_large(self, size: int) -> None:
        limit = self.server.service.limits.max_payload_bytes
        self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {size} bytes is over the {limit}-byte limit")

    def handle_expect_100(self) -> bool:
        """A client waiting for ``100 Continue`` hears 413 before it sends a body over the limit."""
        size = self._declared_size()
        if size is None or not self._over_limit(size):
            return super().handle_expect_100()
        self.close_connection = True  # the body it announced never comes, or comes unread
        self._refuse_too_large(size)
        return False

    def _body(self) -> bytes | None:
        """The request body, or None after answering 411/413 (a body over the limit is dropped unparsed)."""
        size = self._declared_size()
        if size is None:
            self.close_connection = True  # where the body ends is unknown
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return None
        if self._over_limit(size):
            self._discard_body()
            self._refuse_too_large(size)
            return None
        return self.rfile.read(size)

    def _dispatch(self) -> None:
        """Route by path first, then method: a known path asked with the wrong method is 405, not 404."""
        endpoint, name, version = _endpoint(self.path)
        if endpoint is None:
            self._discard_body()
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path!r}", ErrorCode.NOT_FOUND)
            return
        allowed = ALLOWED[endpoint]
        if self.command != allowed:
            self._discard_body()
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.path} takes {allowed}, not {self.command}",
                        headers={"Allow": allowed})
            return
        if version is not None and not self._serves_version(name, version):
            return
        getattr(self, f"_{endpoint}")(name)

    def _serves_version(self, name: str, version: str) -> bool:
        """Whether ``version`` of ``name`` serves here; if not, answered 404 (with the version that does)."""
        meta = self.server.service.model_metadata(name)
        if meta is not None and version in meta["versions"]:
            return True
        self._discard_body()
        if meta is None:
            self._unknown_model(name)
        else:
            self._error(HTTPStatus.NOT_FOUND, f"model {name!r} serves version {', '.join(meta['versions'])} here,"
                                              f" not {version!r}", ErrorCode.NOT_FOUND)
        return False

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _server(self, _name: str) -> None:
        self._json(HTTPStatus.OK, server_metadata())

    def _live(self, _name: str) -> None:
        self._json(HTTPStatus.OK, {"live": True})

    def _ready(self, _name: str) -> None:
        ready = self.server.service.ready()
        self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"ready": ready})

    def _metrics(self, _name: str) -> None:
        body, content_type = self.server.service.metrics_text()
        self._send(HTTPStatus.OK, body, content_type)

    def _model(self, name: str) -> None:
        meta = self.server.service.model_metadata(name)
        if meta is None:
            self._unknown_model(name)
        else:
            self._json(HTTPStatus.OK, meta)

    def _model_ready(self, name: str) -> None:
        service = self.server.service
        if service.model_metadata(name) is None:
            self._unknown_model(name)
            return
        ready = service.ready()
        self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"name": name, "ready": ready})

    def _unknown_model(self, name: str) -> None:
        self._error(HTTPStatus.NOT_FOUND, f"unknown model {name!r}", ErrorCode.UNKNOWN_TASK)

    def _model_body(self, name: str) -> tuple[bytes, dict[str, Any]] | None:
        """The body of a POST to a served model and the model's metadata, or None after answering (411, 413, 404)."""
        body = self._body()
        if body is None:
            return None
        meta = self.server.service.model_metadata(name)
        if meta is None:
            self._unknown_model(name)
            return None
        return body, meta

    def _infer(self, name: str) -> None:
        posted = self._model_body(name)
        if posted is None:
            return
        body, meta = posted
        service = self.server.service
        with service.admission(name):  # the model's callers let in at once (models.<task>.max_concurrent_requests)
            try:
                doc, binary_part = split_body(body, self.headers.get(binary.HEADER), service.limits)
                request = decode_document(name, doc, service.limits, binary_part)
                # OIP addresses inputs by name: strict, as Triton is, even for one input (a misnamed tensor is
                # usually a request built for another model)
                check_input_names(f"model {name!r}", [i["name"] for i in meta["inputs"]], list(request.inputs))
                wanted = binary_outputs(doc, [o["name"] for o in meta["outputs"]])
                reply = service.infer(request)
            except ProtocolError as exc:
                self._error(STATUS_OF[exc.code], exc.message, exc.code)
                return
            answer, header_length = encode_reply(reply, (name, meta["versions"][0]), wanted)
        if header_length is None:
            self._send(HTTPStatus.OK, answer)
        else:
            self._send(HTTPStatus.OK, answer, binary.OCTET_STREAM, {binary.HEADER: str(header_length)})

    def _feedback(self, name: str) -> None:
        posted = self._model_body(name)
        if posted is None:
            return
        body = posted[0]
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
            found = self.server.service.feedback(request_id, label, name)  # another model's answer is not found here
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        if not found:
            self._error(HTTPStatus.NOT_FOUND, f"no stored sample or recent answer of model {name!r} for request"
                                              f" {request_id!r} (evicted, never kept, or another model's)",
                        ErrorCode.NOT_FOUND)
            return
        self._json(HTTPStatus.OK, {"id": request_id, "label": label})


class ApiServer(BackgroundHttpServer):
    """The HTTP server bound to one agent; ``start`` serves on a background thread."""

    def __init__(self, service: InferenceService, host: str = "127.0.0.1", port: int = 8080) -> None:
        super().__init__((host, port), _Handler)
        self.service = service
