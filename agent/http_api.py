"""The agent's local HTTP API: KServe Open Inference Protocol v2, feedback and Prometheus metrics.

Served by agent/http_server.py: requests come to a worker thread in groups,
and a group's inference requests are driven together (agent/steps.py): their
rows reach the model's batcher at once, and those waiting for the cloud hold no
thread, each resumed by the cloud's answer or by its deadline. Bodies reuse the
wire protocol's OIP codec, so MQTT and HTTP callers see the same errors.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from importlib import metadata
from typing import Any, Protocol

from agent.admission import Admission
from agent.feeds import check_input_names
from agent.http_server import Exchange, HttpServer, Request, Response
from agent.latch import Latch
from agent.protocol import ErrorCode, ErrorReply, InferReply, InferRequest, Limits, ProtocolError, binary, oip
from agent.protocol.binary import binary_outputs, encode_reply, split_body
from agent.protocol.codec import decode_document
from agent.steps import CloudWait, Entry, Outcome, Steps, run_group

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

    def answer_steps(self, request: InferRequest) -> Steps: ...

    def admission(self, name: str) -> Admission[Any]: ...

    def feedback(self, request_id: str, label: int, task: str | None = None) -> bool: ...

    def metrics_text(self) -> tuple[bytes, str]: ...


def _json(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None, *, close: bool = False
          ) -> Response:
    return Response(status, oip.dumps(doc), headers=headers or {}, close=close)


def _error(status: int, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST, headers: dict[str, str] | None = None,
           *, close: bool = False) -> Response:
    return _json(status, {"error": message, "code": code.value}, headers, close=close)


def _unknown_model(name: str) -> Response:
    return _error(HTTPStatus.NOT_FOUND, f"unknown model {name!r}", ErrorCode.UNKNOWN_TASK)


@dataclass
class _Call:
    """One inference request over HTTP, from its admission to its answer."""

    exchange: Exchange
    name: str
    meta: dict[str, Any]
    admission: Admission[Any]
    wanted: dict[str, bool] | None = None  # the outputs to answer with, once the body is read


class _CloudAnswer:
    """Resumes a request waiting for the cloud exactly once: by the answer, or by its deadline, whichever comes first."""

    def __init__(self, entry: Entry[_Call], server: HttpServer) -> None:
        self.entry = entry
        self._server = server
        self._lock = threading.Lock()
        self._fired = False
        self._cancel_late: Callable[[], None] | None = None

    def arm(self, wait: CloudWait) -> None:
        """Resume at ``wait``'s answer or at its deadline, whichever comes first.

        The deadline's timer is set first (the answer may be in already, and cancels it): an early answer
        does not leave the request's steps on the loop until the deadline.
        """
        self._cancel_late = self._server.call_at(wait.deadline, self.late)
        wait.answer.add_done_callback(self.answered)

    def answered(self, latch: Latch[InferReply | ErrorReply]) -> None:
        try:
            value, error = latch.result(0), None
        except Exception as exc:  # noqa: BLE001  # what the wait failed with is thrown into the request's steps
            value, error = None, exc
        if self.fire(value, error) and self._cancel_late is not None:
            self._cancel_late()

    def late(self) -> None:
        self.fire(None, TimeoutError("the cloud did not answer in time"))

    def fire(self, value: object, error: BaseException | None) -> bool:
        """Resume the request with ``value`` or ``error``, unless it was resumed already (then False)."""
        with self._lock:
            if self._fired:
                return False
            self._fired = True
        self.entry.value, self.entry.error = value, error
        self._server.submit(self)
        return True


class _Api:
    """The endpoints: refusals from the headers on the server's loop, answers on its workers."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.server: HttpServer | None = None  # set by ApiServer

    # -- on the loop: what is refused before its body ------------------------------------------------
    def refuse(self, request: Request) -> Response | None:
        """Route by path first, then method: a known path asked with the wrong method is 405, not 404."""
        endpoint, name, version = _endpoint(request.path)
        if endpoint is None:
            return _error(HTTPStatus.NOT_FOUND, f"no such endpoint {request.path!r}", ErrorCode.NOT_FOUND)
        allowed = ALLOWED[endpoint]
        if request.method != allowed and (request.method, allowed) != ("HEAD", "GET"):  # HEAD: a GET's headers
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.path} takes {allowed}, not {request.method}",
                          headers={"Allow": allowed})
        if version is not None:
            meta = self.service.model_metadata(name)
            if meta is None:
                return _unknown_model(name)
            if version not in meta["versions"]:
                return _error(HTTPStatus.NOT_FOUND, f"model {name!r} serves version {', '.join(meta['versions'])}"
                                                    f" here, not {version!r}", ErrorCode.NOT_FOUND)
        if allowed != "POST":
            return None
        size = request.declared_size
        if size is None:  # where the body ends is unknown
            return _error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required", close=True)
        limit = self.service.limits.max_payload_bytes
        if size > limit:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {size} bytes is over the {limit}-byte limit")
        if self.service.model_metadata(name) is None:
            return _unknown_model(name)
        return None

    # -- on a worker -----------------------------------------------------------------------------------
    def work(self, items: list[Any]) -> None:
        """Answer what came; the group's inference requests are driven together."""
        entries: list[Entry[_Call]] = []
        for item in items:
            if isinstance(item, _CloudAnswer):
                entries.append(item.entry)
            elif isinstance(item, _Call):  # admitted now that another request left
                self._start(item, entries)
            else:
                self._route(item, entries)
        grouped = run_group(entries)
        for call, outcome in grouped.done:
            self._finish(call, outcome)
        assert self.server is not None
        for entry, wait in grouped.waiting:
            _CloudAnswer(entry, self.server).arm(wait)

    def _route(self, exchange: Exchange, entries: list[Entry[_Call]]) -> None:
        endpoint, name, _ = _endpoint(exchange.request.path)
        if endpoint == "infer":
            meta = self.service.model_metadata(name)
            if meta is None:  # unloaded since its headers came
                exchange.respond(_unknown_model(name))
                return
            call = _Call(exchange, name, meta, self.service.admission(name))
            if call.admission.enter(call):  # else parked until a request of the model leaves
                self._start(call, entries)
        elif endpoint == "feedback":
            exchange.respond(self._feedback(name, exchange.request.body))
        else:
            exchange.respond(self._look(endpoint, name))

    def _start(self, call: _Call, entries: list[Entry[_Call]]) -> None:
        """Read the request's body; its steps join the group, or it is answered (and leaves) at once."""
        service, name, request = self.service, call.name, call.exchange.request
        try:
            doc, binary_part = split_body(request.body, request.headers.get(binary.HEADER.lower()), service.limits)
            decoded = decode_document(name, doc, service.limits, binary_part)
            # OIP addresses inputs by name: strict, as Triton is, even for one input (a misnamed tensor is
            # usually a request built for another model)
            check_input_names(f"model {name!r}", [i["name"] for i in call.meta["inputs"]], list(decoded.inputs))
            call.wanted = binary_outputs(doc, [o["name"] for o in call.meta["outputs"]])
            steps = service.answer_steps(decoded)
        except Exception as exc:  # noqa: BLE001  # a ProtocolError is the caller's 4xx, anything else a 500
            self._finish(call, exc)
            return
        entries.append(Entry(call, steps))

    def _finish(self, call: _Call, outcome: Outcome) -> None:
        """Answer the request and let the next parked one of its model in."""
        try:
            call.exchange.respond(self._answer(call, outcome))
        finally:
            admitted = call.admission.leave()
            if admitted is not None:
                assert self.server is not None
                self.server.submit(admitted)

    @staticmethod
    def _answer(call: _Call, outcome: Outcome) -> Response:
        if isinstance(outcome, ProtocolError):
            return _error(STATUS_OF[outcome.code], outcome.message, outcome.code)
        if not isinstance(outcome, InferReply):
            log.error("answering a request for %s failed", call.name, exc_info=outcome)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (in the agent's log)", ErrorCode.INTERNAL)
        assert call.wanted is not None
        answer, header_length = encode_reply(outcome, (call.name, call.meta["versions"][0]), call.wanted)
        if header_length is None:
            return Response(HTTPStatus.OK, answer)
        return Response(HTTPStatus.OK, answer, binary.OCTET_STREAM, {binary.HEADER: str(header_length)})

    def _look(self, endpoint: str | None, name: str) -> Response:
        """The GET endpoints."""
        service = self.service
        if endpoint == "server":
            return _json(HTTPStatus.OK, server_metadata())
        if endpoint == "live":
            return _json(HTTPStatus.OK, {"live": True})
        if endpoint == "metrics":
            body, content_type = service.metrics_text()
            return Response(HTTPStatus.OK, body, content_type)
        meta = service.model_metadata(name) if endpoint in ("model", "model_ready") else None
        if endpoint == "model":
            return _json(HTTPStatus.OK, meta) if meta is not None else _unknown_model(name)
        ready = service.ready()
        if endpoint == "model_ready":
            if meta is None:
                return _unknown_model(name)
            return _json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"name": name, "ready": ready})
        return _json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"ready": ready})

    def _feedback(self, name: str, body: bytes) -> Response:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}")
        request_id, label = (doc.get("id"), doc.get("label")) if isinstance(doc, dict) else (None, None)
        if not isinstance(request_id, str) or isinstance(label, bool) or not isinstance(label, int):
            return _error(HTTPStatus.BAD_REQUEST, 'feedback body must be {"id": "<request id>", "label": <int>}')
        try:
            found = self.service.feedback(request_id, label, name)  # another model's answer is not found here
        except ValueError as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc))
        if not found:
            return _error(HTTPStatus.NOT_FOUND, f"no stored sample or recent answer of model {name!r} for request"
                                                f" {request_id!r} (evicted, never kept, or another model's)",
                          ErrorCode.NOT_FOUND)
        return _json(HTTPStatus.OK, {"id": request_id, "label": label})


class ApiServer(HttpServer):
    """The HTTP server bound to one agent; ``start`` serves on background threads."""

    def __init__(self, service: InferenceService, host: str = "127.0.0.1", port: int = 8080) -> None:
        api = _Api(service)
        super().__init__(api, host, port, name="http")
        api.server = self
