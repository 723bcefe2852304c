"""An HTTP client for the agent's API tests: the standard library's urllib, as a user's script would call it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def http_call(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, Any] | str]:
    """(status, JSON document or text) of one request to the agent on ``port``; errors are answers too."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text
