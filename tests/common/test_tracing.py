"""Tracing: a served request leaves its spans in the local OTLP/JSON file."""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.cli.serving import running_service
from services.common.telemetry import OtlpJsonLinesExporter, tracing_enabled
from tests.harness import DatabaseHarness


def _spans(path: Path) -> list[dict[str, Any]]:
    spans = []
    for line in path.read_text().splitlines():
        for resource in json.loads(line)["resourceSpans"]:
            service = {a["key"]: a["value"] for a in resource["resource"]["attributes"]}["service.name"]["stringValue"]
            for scope in resource["scopeSpans"]:
                for span in scope["spans"]:
                    spans.append({**span, "service": service})
    return spans


def test_span_files_are_private_and_rotate_at_their_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text("")
    path.chmod(0o644)  # made earlier, world-readable: tightened when opened
    # Each export of one span is one line of a few hundred bytes; 1 byte cap = one line per file.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonLinesExporter(path, max_bytes=1, backups=2)))
    tracer = provider.get_tracer("test")
    for name in ("first", "second", "third", "fourth"):
        with tracer.start_as_current_span(name):
            pass
    provider.shutdown()

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2"]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == dict.fromkeys(files, 0o600)
    # The newest two full files are kept, "first" is gone; the current file is empty.
    assert [span["name"] for span in _spans(tmp_path / "spans.jsonl.2")] == ["third"]
    assert [span["name"] for span in _spans(tmp_path / "spans.jsonl.1")] == ["fourth"]
    assert path.read_text() == ""


def test_exporter_writes_otlp_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonLinesExporter(path)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span("inner") as inner:
        inner.set_attribute("rows", 3)
        inner.set_attribute("ok", True)
    provider.shutdown()
    spans = {span["name"]: span for span in _spans(path)}
    assert set(spans) == {"outer", "inner"}
    assert spans["inner"]["traceId"] == format(outer.get_span_context().trace_id, "032x")
    assert spans["inner"]["parentSpanId"] == format(outer.get_span_context().span_id, "016x")
    assert spans["outer"]["parentSpanId"] == ""
    assert int(spans["inner"]["endTimeUnixNano"]) >= int(spans["inner"]["startTimeUnixNano"]) > 0
    assert {"key": "rows", "value": {"intValue": "3"}} in spans["inner"]["attributes"]
    assert {"key": "ok", "value": {"boolValue": True}} in spans["inner"]["attributes"]


def test_tracing_is_off_without_a_destination() -> None:
    assert not tracing_enabled({})
    assert tracing_enabled({"SIGHTLINE_TRACE_DIR": "/tmp/x"})
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing_enabled({"SIGHTLINE_TRACE_DIR": "/tmp/x", "OTEL_SDK_DISABLED": "true"})


def _traced(db: DatabaseHarness) -> tuple[Path, dict[str, str]]:
    """A trace file of its own, and an environment that traces every request into it."""
    trace_file = db.root / f"traces-{uuid.uuid4().hex[:8]}.jsonl"
    env = {
        **os.environ,
        "SIGHTLINE_DATABASE_URL": db.database.url,
        "SIGHTLINE_TRACE_FILE": str(trace_file),
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    return trace_file, env


def _one_pageview(project: dict[str, Any], **event: str) -> dict[str, Any]:
    """An ingest body of one pageview, with `event`'s fields added to it."""
    pageview = {
        "event": "pageview",
        "distinctId": "d",
        "sessionId": "s",
        "url": "https://example.com/",
        "timestamp": "2030-01-01T00:00:00Z",
    }
    return {"projectKey": project["publicKey"], "events": [pageview | event]}


def _wait_for_span(trace_file: Path, name: str, failure: str = "no server span was exported") -> None:
    deadline = time.monotonic() + 10
    while not (trace_file.exists() and any(s["name"] == name for s in _spans(trace_file))):
        assert time.monotonic() < deadline, failure
        time.sleep(0.2)


@pytest.fixture
def traced_ingest(db: DatabaseHarness) -> Iterator[tuple[str, Path]]:
    trace_file, env = _traced(db)
    with running_service("ingest", env, db.root / "log" / f"{trace_file.stem}.log") as ingest:
        yield ingest.url, trace_file


def test_an_ingest_request_leaves_its_breakdown_in_the_trace_file(
    traced_ingest: tuple[str, Path], project: dict[str, Any]
) -> None:
    url, trace_file = traced_ingest
    response = httpx.post(
        f"{url}/v1/events", params={"key": project["publicKey"]}, json=_one_pageview(project, uuid=str(uuid.uuid4()))
    )
    assert response.status_code == 202
    _wait_for_span(trace_file, "POST /v1/events")
    _wait_for_span(trace_file, "ingest.respond", "the response's span was not exported")
    spans = _spans(trace_file)
    [server] = [s for s in spans if s["name"] == "POST /v1/events"]
    assert server["kind"] == 2
    assert server["service"] == "sightline-ingest"
    children = {s["name"] for s in spans if s["traceId"] == server["traceId"] and s is not server}
    assert {
        "ingest.decode_json",
        "ingest.enrich",
        "ingest.writer.queue_wait",
        "db.pool_checkout",
        "db.sql",  # the batch's statements and their commit: one round trip
        "ingest.read_body",
        "ingest.resume_wait",  # from the commit to the request's task running again
        "ingest.dispatch",  # from the server span's start to the tracker door
        "ingest.route",  # from the slot taken to the handler's first step
        "ingest.admit",  # the URL key's project
        "ingest.respond",  # the answer handed to the server
    } <= children
    in_trace = {s["name"]: s for s in spans if s["traceId"] == server["traceId"]}
    # The loop's lag begins where the SQL (with its commit) ended, and ends inside the request.
    sql, resume = in_trace["db.sql"], in_trace["ingest.resume_wait"]
    assert int(sql["endTimeUnixNano"]) == int(resume["startTimeUnixNano"])
    assert int(resume["startTimeUnixNano"]) <= int(resume["endTimeUnixNano"]) <= int(server["endTimeUnixNano"])
    # The steps no code inside them can time sit at the server span's two ends, as its children.
    dispatch, read, respond = in_trace["ingest.dispatch"], in_trace["ingest.read_body"], in_trace["ingest.respond"]
    assert int(dispatch["startTimeUnixNano"]) == int(server["startTimeUnixNano"])
    assert int(dispatch["endTimeUnixNano"]) <= int(read["startTimeUnixNano"])
    route, admit = in_trace["ingest.route"], in_trace["ingest.admit"]
    assert int(in_trace["ingest.admission_wait"]["endTimeUnixNano"]) <= int(route["startTimeUnixNano"])
    assert int(route["endTimeUnixNano"]) <= int(admit["startTimeUnixNano"])
    assert int(resume["endTimeUnixNano"]) == int(respond["startTimeUnixNano"])  # the answer begins there
    assert int(respond["endTimeUnixNano"]) <= int(server["endTimeUnixNano"])
    assert dispatch["parentSpanId"] == route["parentSpanId"] == respond["parentSpanId"] == server["spanId"]
    # Health checks and per-message ASGI spans are not traced.
    assert not any(s["name"].startswith("GET /health") for s in spans)
    assert not any("http send" in s["name"] or "http receive" in s["name"] for s in spans)


def test_a_read_api_request_has_sql_client_spans(db: DatabaseHarness, project: dict[str, Any]) -> None:
    trace_file, env = _traced(db)
    with running_service("replay", env, db.root / "log" / f"{trace_file.stem}.log") as replay:
        response = httpx.get(f"{replay.url}/v1/sessions", headers={"Authorization": f"Bearer {project['secretKey']}"})
        assert response.status_code == 200
        _wait_for_span(trace_file, "GET /v1/sessions")
    spans = _spans(trace_file)
    [server] = [s for s in spans if s["name"] == "GET /v1/sessions"]
    sql = [
        s
        for s in spans
        if s["traceId"] == server["traceId"]
        and s["kind"] == 3
        and {"key": "db.system", "value": {"stringValue": "postgresql"}} in s["attributes"]
    ]
    assert sql, "the session list's SQL should appear as client spans"


def test_a_client_traceparent_is_ignored_on_tracker_routes_and_honoured_elsewhere(
    db: DatabaseHarness, project: dict[str, Any]
) -> None:
    trace_file, env = _traced(db)
    # Nothing is traced by the draw; only a caller's traceparent could ask for it.
    env = {key: value for key, value in env.items() if key != "OTEL_TRACES_SAMPLER"}
    env |= {"SIGHTLINE_TRACE_SAMPLE_RATIO": "0", "SIGHTLINE_INGEST_BENCHMARK_NOOP": "1"}
    tracker_trace, noop_trace = uuid.uuid4().hex, uuid.uuid4().hex
    body = _one_pageview(project)
    with running_service("ingest", env, db.root / "log" / f"{trace_file.stem}.log") as ingest:
        forced = httpx.post(
            f"{ingest.url}/v1/events", json=body, headers={"traceparent": f"00-{tracker_trace}-00f067aa0ba902b7-01"}
        )
        benchmark = httpx.post(
            f"{ingest.url}/v1/noop", json=body, headers={"traceparent": f"00-{noop_trace}-00f067aa0ba902b7-01"}
        )
        assert (forced.status_code, benchmark.status_code) == (202, 202)
        _wait_for_span(trace_file, "POST /v1/noop", "the no-op request's span was not exported")
    spans = _spans(trace_file)
    # (Other spans in the file are the background tasks' own statements.)
    assert {s["name"] for s in spans if s["traceId"] == noop_trace} >= {"POST /v1/noop"}
    assert not any(s["traceId"] == tracker_trace for s in spans)
    assert not any(s["name"] == "POST /v1/events" for s in spans)
