from __future__ import annotations

import json
import logging
import sys

from opentelemetry.sdk.trace import TracerProvider

from services.common.keys import generate_project_keys
from services.common.log import JsonLineFormatter


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("sightline.test", logging.WARNING, __file__, 1, message, (), None)


def test_a_line_is_json_with_time_level_service_and_message() -> None:
    line = json.loads(JsonLineFormatter("ingest").format(_record("writer queue is full")))
    assert line["level"] == "WARNING"
    assert line["service"] == "ingest"
    assert line["message"] == "writer queue is full"
    assert line["time"].endswith("+00:00")
    assert "trace_id" not in line


def test_a_line_inside_a_span_carries_its_trace_id() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        line = json.loads(JsonLineFormatter("query").format(_record("slow query")))
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")


def test_a_secret_key_in_a_message_or_a_traceback_is_replaced() -> None:
    secret_key = generate_project_keys().secret_key
    record = _record(f"GET /v1/sessions?key={secret_key} 401")
    try:
        raise ValueError(f"bad header Bearer {secret_key}")
    except ValueError:
        record.exc_info = sys.exc_info()
    formatted = JsonLineFormatter("replay").format(record)
    assert secret_key not in formatted
    assert secret_key[3:] not in formatted
    line = json.loads(formatted)
    assert line["message"] == "GET /v1/sessions?key=sk_[redacted] 401"
    assert "Bearer sk_[redacted]" in line["exception"]
    # The prefix alone, as in a help text, and names that merely contain "sk_" stay.
    assert json.loads(JsonLineFormatter("replay").format(_record("disk_usage_percent_of_total high")))["message"] == (
        "disk_usage_percent_of_total high"
    )
    assert json.loads(JsonLineFormatter("replay").format(_record("send 'Bearer sk_...'")))["message"] == (
        "send 'Bearer sk_...'"
    )
