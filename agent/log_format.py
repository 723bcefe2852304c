"""One JSON object per log line, for log shippers (the profile's ``logging.format: json``).

A ``%``-template that pastes the message between quotes breaks on the first quote
or newline in a message (a peer's bytes, a path, a traceback), and a log shipper
then drops or splits the line. Here every field is encoded by ``json.dumps``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone


class JsonFormatter(logging.Formatter):
    """``{"t", "level", "logger", "msg"}`` plus ``"exc"`` when the record carries a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "t": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False)
