from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

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
