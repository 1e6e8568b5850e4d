"""Logging for both tiers: one JSON object per line (LOG_FORMAT=json) or plain text.

Fields passed with ``extra={...}`` (trace_id, worker, batch_size ...) become keys of the JSON line,
so one request's trace id can be followed through the web and worker logs with grep.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from image_gateway.settings import Settings

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        return f"{super().format(record)} {extra}".rstrip()


def setup(config: Settings) -> None:
    """Send the gateway's logs to stderr in the configured format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.log_format == "json"
                         else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    root.propagate = False
