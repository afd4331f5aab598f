"""The latency breakdown from OTLP/JSON trace lines, on a hand-made fixture (tests/tools/loadtest/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.loadtest.traces import breakdown, parse_line, read_spans

FIXTURES = Path(__file__).parent / "fixtures"
WINDOW_START_NS = 1_764_000_000_000_000_000  # the fixture's time 0; trace d starts a minute before it
MS = 1_000_000


def fixture_spans() -> tuple[list, int]:  # type: ignore[type-arg]
    return read_spans(sorted(FIXTURES.glob("*.jsonl")), since_ns=WINDOW_START_NS)


def test_spans_are_read_within_the_window_and_a_truncated_line_is_counted() -> None:
    spans, unreadable = fixture_spans()
    assert unreadable == 1
    assert len(spans) == 10 + 4 + 4  # traces a, b, c; trace d is before the window
    assert {span.service for span in spans} == {"sightline-ingest", "sightline-replay"}
    [server] = [span for span in spans if span.span_id == "a000000000000001"]
    assert server.attributes == {"http.route": "/v1/events", "http.status_code": 202}


def test_breakdown_sums_each_category_once_per_endpoint() -> None:
    spans, _ = fixture_spans()
    result = breakdown(spans)
    assert set(result) == {"POST /v1/events", "GET /v1/sessions"}

    events = result["POST /v1/events"]
    # Trace a: 10 ms; trace b: 20 ms, its server span exported in a later line than its children.
    assert (events.requests, events.total_ns) == (2, 30 * MS)
    assert events.by_category_ns == {
        "dispatch": 0,
        "key lookup": 0,
        "response": 0,
        "body receive": 0,
        "admission wait": 0,
        "event-loop lag": 0,
        "pool wait": 1 * MS,
        "writer queue wait": 12 * MS,  # 2 + 10
        "SQL": 7 * MS,  # 3 + 4; the COMMIT client span inside db.commit is not counted again
        "commit": 3 * MS,  # 1 + 2
        "decompression": 1 * MS,  # found below the uncategorised ingest.parse span
        "JSON decoding": MS // 2,
        "enrichment": MS // 2,
    }
    assert events.rest_ns == 5 * MS
    shares = events.shares()
    assert shares["writer queue wait"] == pytest.approx(0.4)
    assert shares["rest"] == pytest.approx(5 / 30)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert events.mean_ms == pytest.approx(15.0)


def test_database_client_spans_count_as_sql_for_the_read_services() -> None:
    spans, _ = fixture_spans()
    sessions = breakdown(spans)["GET /v1/sessions"]
    assert sessions.requests == 1
    assert sessions.by_category_ns["pool wait"] == 2 * MS
    assert sessions.by_category_ns["SQL"] == 4 * MS
    assert sessions.rest_ns == 2 * MS  # 8 ms - 2 - 4; replay.stream is not a category


def test_span_kinds_written_by_name_are_understood() -> None:
    # What protobuf's MessageToJson writes by default: enum names, base64 ids, no empty parent.
    line = (
        '{"resourceSpans":[{"resource":{"attributes":[]},"scopeSpans":[{"spans":['
        '{"traceId":"q83vEjRWeJA=","spanId":"AAAAAAAAAAE=","name":"POST /v1/replay","kind":"SPAN_KIND_SERVER",'
        '"startTimeUnixNano":"1000000","endTimeUnixNano":"5000000"},'
        '{"traceId":"q83vEjRWeJA=","spanId":"AAAAAAAAAAI=","parentSpanId":"AAAAAAAAAAE=","name":"INSERT",'
        '"kind":"SPAN_KIND_CLIENT","startTimeUnixNano":"2000000","endTimeUnixNano":"3000000",'
        '"attributes":[{"key":"db.system","value":{"stringValue":"postgresql"}}]}]}]}]}'
    )
    [replay] = breakdown(parse_line(line)).values()
    assert (replay.endpoint, replay.requests, replay.total_ns) == ("POST /v1/replay", 1, 4 * MS)
    assert replay.by_category_ns["SQL"] == 1 * MS
    assert replay.rest_ns == 3 * MS


def test_no_spans_give_an_empty_breakdown() -> None:
    assert breakdown([]) == {}


def _span(span_id: str, parent: str, name: str, kind: int, start_ms: float, end_ms: float) -> str:
    parent_field = f'"parentSpanId":"{parent}",' if parent else ""
    return (
        f'{{"traceId":"e1","spanId":"{span_id}",{parent_field}"name":"{name}","kind":{kind},'
        f'"startTimeUnixNano":"{int(start_ms * MS)}","endTimeUnixNano":"{int(end_ms * MS)}"}}'
    )


def test_ingest_body_receive_admission_wait_and_event_loop_lag_are_their_own_categories() -> None:
    # A 40 ms replay POST: 6 ms reading the body, 4 ms for a slot, 20 ms of SQL, then 8 ms from
    # the commit to the request's task running again; 2 ms of the handler's own work is "rest".
    spans = ",".join(
        [
            _span("s1", "", "POST /v1/replay", 2, 0, 40),
            _span("s2", "s1", "ingest.read_body", 1, 0.5, 6.5),
            _span("s3", "s1", "ingest.admission_wait", 1, 6.5, 10.5),
            _span("s4", "s1", "db.sql", 1, 11, 31),
            _span("s5", "s1", "ingest.resume_wait", 1, 31, 39),
        ]
    )
    line = f'{{"resourceSpans":[{{"resource":{{"attributes":[]}},"scopeSpans":[{{"spans":[{spans}]}}]}}]}}'
    [replay] = breakdown(parse_line(line)).values()
    assert replay.by_category_ns["body receive"] == 6 * MS
    assert replay.by_category_ns["admission wait"] == 4 * MS
    assert replay.by_category_ns["SQL"] == 20 * MS
    assert replay.by_category_ns["event-loop lag"] == 8 * MS
    assert replay.rest_ns == 2 * MS
    assert replay.explained == pytest.approx(38 / 40)
