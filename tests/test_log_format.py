"""JSON log lines stay one valid JSON object each, whatever the message holds."""

from __future__ import annotations

import json
import logging
import sys

from agent.log_format import JsonFormatter


def _record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info() if exc_info else None
    return logging.LogRecord("agent.uplink", logging.WARNING, __file__, 1, message, args, info)


def test_quotes_newlines_and_bytes_in_a_message_stay_one_parseable_line() -> None:
    line = JsonFormatter().format(_record("ignored a reply with correlation data %r\nnext", b'x"y'))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["msg"] == "ignored a reply with correlation data b'x\"y'\nnext"
    assert (doc["level"], doc["logger"]) == ("WARNING", "agent.uplink") and doc["t"].endswith("+00:00")


def test_a_traceback_travels_inside_the_object() -> None:
    line = JsonFormatter().format(_record("failed", exc_info=True))
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]
