"""The operator dashboard over HTTP: one page, and the JSON snapshot it polls.

Read-only: it offers no action (promote and roll back stay with `fedge-cloud rollout`, which needs
the release key), so it binds to localhost by default and anyone who can reach it can only look.
The page is a single file with its script inline: no build step, no CDN, it works offline.
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from importlib import resources
from typing import Any

from agent.http_server import Exchange, HttpServer, Request, Response
from cloud.dashboard.snapshot import snapshot
from cloud.registry import Registry, RegistryUnavailable

PAGE = resources.files("cloud.dashboard").joinpath("page.html")


_NO_STORE = {"Cache-Control": "no-store"}  # the state changes every poll


class _Dashboard:
    """The two pages; anything but GET and HEAD is refused from its headers."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.page = PAGE.read_bytes()

    def refuse(self, request: Request) -> Response | None:
        if request.method in ("GET", "HEAD"):
            return None
        return Response(HTTPStatus.METHOD_NOT_ALLOWED, b'{"error": "the dashboard is read-only"}',
                        headers={**_NO_STORE, "Allow": "GET, HEAD"})

    def work(self, items: list[Exchange]) -> None:
        for exchange in items:
            exchange.respond(self._get(exchange.request.path.split("?", 1)[0]))

    def _get(self, path: str) -> Response:
        if path in ("/", "/index.html"):
            return Response(HTTPStatus.OK, self.page, "text/html; charset=utf-8", _NO_STORE)
        if path == "/api/state":
            status, doc = self.state()
            return Response(status, json.dumps(doc).encode(), headers=_NO_STORE)
        return Response(HTTPStatus.NOT_FOUND, b'{"error": "not found: the dashboard serves / and /api/state"}',
                        headers=_NO_STORE)

    def state(self) -> tuple[int, dict[str, Any]]:
        """The snapshot, or 503 naming why the registry could not be read (the page shows it and keeps polling)."""
        try:
            return HTTPStatus.OK, snapshot(self.registry, time.time())
        except RegistryUnavailable as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)}


class DashboardUnavailable(Exception):
    """The dashboard cannot listen where it was asked to; the message says where and why."""


class DashboardServer(HttpServer):
    """Serves the page and the registry's snapshot (one worker: the registry serializes its own use anyway)."""

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 8090) -> None:
        super().__init__(_Dashboard(registry), host, port, workers=1, name="dashboard")


def open_dashboard(registry: Registry | None, host: str, port: int) -> DashboardServer:
    """A dashboard bound to ``host:port`` (not yet serving); DashboardUnavailable when the port cannot be had."""
    if registry is None:
        raise ValueError("the dashboard shows the registry's state: serve needs a registry for it")
    try:
        return DashboardServer(registry, host, port)
    except OSError as exc:
        raise DashboardUnavailable(f"the dashboard cannot listen on {host}:{port}: {exc.strerror or exc}") from None
