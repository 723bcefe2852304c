"""The operator dashboard over HTTP: one page, and the JSON snapshot it polls.

Read-only: it offers no action (promote and roll back stay with `fedge-cloud rollout`, which needs
the release key), so it binds to localhost by default and anyone who can reach it can only look.
The page is a single file with its script inline: no build step, no CDN, it works offline.
"""

from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from importlib import resources
from typing import Any

from agent.http_server import BackgroundHttpServer, ResponseHandler
from cloud.dashboard.snapshot import snapshot
from cloud.registry import Registry, RegistryUnavailable

log = logging.getLogger(__name__)
PAGE = resources.files("cloud.dashboard").joinpath("page.html")


class _Handler(ResponseHandler):
    server: DashboardServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard %s", format % args)

    def _page(self, status: int, body: bytes, content_type: str) -> None:
        self._send(status, body, content_type, {"Cache-Control": "no-store"})  # the state changes every poll

    def do_GET(self) -> None:  # the name http.server looks up
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._page(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/state":
            status, doc = self.server.state()
            self._page(status, json.dumps(doc).encode(), "application/json")
        else:
            self._page(HTTPStatus.NOT_FOUND, b'{"error": "not found: the dashboard serves / and /api/state"}',
                       "application/json")

    do_HEAD = do_GET

    def _refuse(self) -> None:
        self.close_connection = True  # its body is never read: the connection cannot carry another request
        self._page(HTTPStatus.METHOD_NOT_ALLOWED, b'{"error": "the dashboard is read-only"}', "application/json")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


class DashboardUnavailable(Exception):
    """The dashboard cannot listen where it was asked to; the message says where and why."""


class DashboardServer(BackgroundHttpServer):
    """Serves the page and the registry's snapshot (the registry serializes its own use across threads)."""

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 8090) -> None:
        super().__init__((host, port), _Handler)
        self.registry = registry
        self.page = PAGE.read_bytes()

    def state(self) -> tuple[int, dict[str, Any]]:
        """The snapshot, or 503 naming why the registry could not be read (the page shows it and keeps polling)."""
        try:
            return HTTPStatus.OK, snapshot(self.registry, time.time())
        except RegistryUnavailable as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)}


def open_dashboard(registry: Registry | None, host: str, port: int) -> DashboardServer:
    """A dashboard bound to ``host:port`` (not yet serving); DashboardUnavailable when the port cannot be had."""
    if registry is None:
        raise ValueError("the dashboard shows the registry's state: serve needs a registry for it")
    try:
        return DashboardServer(registry, host, port)
    except OSError as exc:
        raise DashboardUnavailable(f"the dashboard cannot listen on {host}:{port}: {exc.strerror or exc}") from None
