"""Structured JSON-line logs: time, level, service, message, and the trace id when there is one.

Nothing logs per request at INFO on the hot path: under load that is thousands of lines a
second, and the seed's deploy hung while its tooling read such a flood.

No line carries a project's secret key: requests send it only in the Authorization header,
which nothing logs, and Granian runs without an access log. Should one reach a message or a
traceback anyway (a library quoting a header, an access log switched on for a URL someone
built by hand), the formatter replaces it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from opentelemetry import trace

# services.common.keys makes secret keys as "sk_" + 43 URL-safe characters; shorter runs
# (a prefix in a sentence such as "sk_...") are left alone.
_SECRET_KEY = re.compile(r"(?<![A-Za-z0-9_-])sk_[A-Za-z0-9_-]{16,}")
REDACTED_KEY = "sk_[redacted]"


def redact_secret_keys(text: str) -> str:
    return _SECRET_KEY.sub(REDACTED_KEY, text)


class JsonLineFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": redact_secret_keys(record.getMessage()),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            line["trace_id"] = format(span_context.trace_id, "032x")
            line["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info:
            line["exception"] = redact_secret_keys(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Granian and Litestar log through their own loggers; keep them in the same format.
    for name in ("_granian", "granian.access", "litestar"):
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True


def granian_log_config(service: str) -> dict[str, object]:
    """Granian's own logger settings (``--log-config``) in the same JSON-line format."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonLineFormatter", "service": service}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        },
    }
