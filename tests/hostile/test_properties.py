"""Property-based tests of the code that first meets a client's bytes: whatever arrives, the
answer is a client error with a code (or the decoded value), never an unexpected exception."""

from __future__ import annotations

import base64
import gzip
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import ApiError
from services.ingest.decoding import decode_json, gunzip_bounded
from services.ingest.schemas import EventBatch, ReplayChunkBody
from services.ingest.service import summarise_rrweb
from services.query import service as query_service
from services.query.schemas import FunnelSpec, QuerySpec, RetentionSpec
from services.replay import routes as replay_routes
from services.replay.service import decode_cursor

# No example database: a run does not depend on what an earlier run found.
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Any JSON value, text included NUL and lone surrogate-free unicode, numbers at the edges.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)

TIMESTAMP_MS = st.integers(min_value=0, max_value=253_402_300_799_000)
rrweb_events = st.fixed_dictionaries(
    {"type": st.integers(min_value=-1, max_value=7), "timestamp": TIMESTAMP_MS},
    optional={
        "data": st.fixed_dictionaries(
            {},
            optional={
                "source": st.integers(min_value=-5, max_value=20) | st.text(max_size=3),
                "type": st.integers(min_value=-5, max_value=5),
                "href": st.text(max_size=40) | st.just("https://example.com/\u0000"),
            },
        )
    },
)
chunk_bodies = st.fixed_dictionaries(
    {
        "projectKey": st.text(max_size=5),
        "sessionId": st.text(max_size=10),
        "distinctId": st.text(max_size=10),
        "seq": st.integers(min_value=-(2**65), max_value=2**65),
        "events": st.lists(rrweb_events, max_size=6),
    }
)
event_bodies = st.fixed_dictionaries(
    {
        "projectKey": st.text(max_size=5),
        "events": st.lists(
            st.fixed_dictionaries(
                {
                    "event": st.text(max_size=5),
                    "distinctId": st.text(max_size=5),
                    "sessionId": st.text(max_size=5),
                    "timestamp": st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat) | st.text(max_size=8),
                    "url": st.text(max_size=20),
                },
                optional={"properties": json_values, "uuid": st.uuids().map(str) | st.text(max_size=5)},
            ),
            max_size=3,
        ),
    },
    optional={"sentAt": st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat) | json_values},
)


def _client_error(exc: ApiError, statuses: set[int], fields: set[str | None] | None = None) -> None:
    assert exc.status_code in statuses
    assert exc.code
    assert exc.message
    if fields is not None:
        assert exc.field in fields


@FAST
@given(body=st.binary(max_size=200))
def test_any_bytes_decode_to_a_batch_or_a_client_error(body: bytes) -> None:
    for target in (EventBatch, ReplayChunkBody):
        try:
            decode_json(body, target)
        except ApiError as exc:
            _client_error(exc, {400, 422})


@FAST
@given(payload=st.one_of(event_bodies, json_values))
def test_any_json_decodes_to_an_event_batch_or_a_422_naming_a_field(payload: Any) -> None:
    try:
        batch = decode_json(msgspec.json.encode(payload), EventBatch)
    except ApiError as exc:
        _client_error(exc, {400, 422})
        return
    # What decodes is what the contract allows: no NUL reaches Postgres.
    assert "\x00" not in msgspec.json.encode(batch).decode().replace("\\\\", "")


@FAST
@given(payload=chunk_bodies)
def test_any_replay_chunk_decodes_and_summarises_or_is_a_client_error(payload: dict[str, Any]) -> None:
    try:
        chunk = decode_json(msgspec.json.encode(payload), ReplayChunkBody)
        summary = summarise_rrweb(chunk.events)
    except ApiError as exc:
        _client_error(exc, {400, 422})
        return
    assert 0 <= chunk.seq <= 2**31 - 1
    assert summary.first_ms <= summary.last_ms
    assert summary.first_url is None or "\x00" not in summary.first_url


@FAST
@given(body=st.binary(max_size=64), limit=st.integers(min_value=0, max_value=256))
def test_any_bytes_gunzip_within_the_limit_or_are_refused(body: bytes, limit: int) -> None:
    try:
        output = gunzip_bounded(body, limit)
    except ApiError as exc:
        _client_error(exc, {400, 413})
        return
    assert len(output) <= limit


@FAST
@given(data=st.binary(max_size=2048), limit=st.integers(min_value=0, max_value=4096))
def test_gzip_round_trips_exactly_up_to_the_limit(data: bytes, limit: int) -> None:
    compressed = gzip.compress(data)
    if len(data) <= limit:
        assert gunzip_bounded(compressed, limit) == data
    else:
        with pytest.raises(ApiError) as refused:
            gunzip_bounded(compressed, limit)
        assert refused.value.status_code == 413


TIMEZONES = st.sampled_from(["UTC", "Pacific/Kiritimati", "Etc/GMT+12", "Europe/Berlin", "America/St_Johns"])
NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


# Anywhere in the calendar, but often near its ends, where local midnights leave it.
DATES = st.one_of(
    st.dates(),
    st.dates(max_value=date(1, 2, 1)),
    st.dates(min_value=date(9999, 12, 1)),
    st.dates(min_value=date(1969, 12, 1), max_value=date(1970, 2, 1)),
)


@FAST
@given(date_from=DATES, length_days=st.integers(min_value=-3, max_value=2000), timezone=TIMEZONES)
def test_any_custom_range_resolves_or_is_a_422(date_from: date, length_days: int, timezone: str) -> None:
    date_to = date.fromordinal(min(date.max.toordinal(), max(1, date_from.toordinal() + length_days)))
    spec = QuerySpec(metrics=["visitors"], period="custom", date_from=date_from, date_to=date_to)
    try:
        resolved = query_service.resolve_range(spec, timezone, NOW)
    except ApiError as exc:
        _client_error(exc, {422}, {"date_from", "date_to"})
        return
    assert resolved.start < resolved.end
    assert 1 <= resolved.days <= query_service.MAX_RANGE_DAYS
    previous = query_service.previous_period(resolved, timezone)
    assert previous.end <= resolved.start


@FAST
@given(payload=json_values | st.dictionaries(st.sampled_from(["metrics", "filters", "period"]), json_values))
def test_any_json_is_a_query_spec_or_a_validation_error(payload: Any) -> None:
    for spec_type in (QuerySpec, FunnelSpec, RetentionSpec):
        try:
            spec = msgspec.convert(payload, spec_type)
        except msgspec.ValidationError:
            continue  # Litestar answers these 422 invalid_request
        try:
            if isinstance(spec, QuerySpec):
                query_service._validate(spec)
            query_service.resolve_range(spec, "Europe/Berlin", NOW)
        except ApiError as exc:
            _client_error(exc, {422})


@FAST
@given(
    metrics=st.lists(st.sampled_from(["visitors", "pageviews"]), min_size=1, max_size=3),
    # A small alphabet that includes NUL, so that NUL turns up often.
    values=st.lists(st.text(alphabet="a/\x00%", max_size=5) | st.none(), min_size=1, max_size=4),
    operator=st.sampled_from(["is", "is_not", "contains", "matches"]),
)
def test_a_filter_that_validates_holds_no_nul(metrics: list[str], values: list[str | None], operator: str) -> None:
    spec = msgspec.convert(
        {"metrics": metrics, "filters": [{"dimension": "page", "operator": operator, "values": values}]}, QuerySpec
    )
    try:
        query_service._validate(spec)
    except ApiError as exc:
        _client_error(exc, {422})
        return
    assert not any(value is not None and "\x00" in value for value in values)


@FAST
@given(text=st.text(max_size=30) | st.from_regex(r"-?[0-9]{1,25}", fullmatch=True))
def test_any_text_is_a_recording_offset_or_a_422(text: str) -> None:
    try:
        offset = replay_routes._offset_ms("from", text)
    except ApiError as exc:
        _client_error(exc, {422}, {"from"})
        return
    assert offset is not None
    assert 0 <= offset <= replay_routes.MAX_OFFSET_MS


@FAST
@given(text=st.text(max_size=40) | st.datetimes().map(datetime.isoformat))
def test_any_text_is_a_utc_date_or_a_422(text: str) -> None:
    try:
        parsed = replay_routes._datetime("dateFrom", text)
    except ApiError as exc:
        _client_error(exc, {422})
        return
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


@FAST
@given(cursor=st.text(max_size=80) | st.binary(max_size=60).map(lambda raw: raw.hex()))
def test_any_cursor_decodes_or_is_a_422(cursor: str) -> None:
    try:
        started_at, _ = decode_cursor(cursor)
    except ApiError as exc:
        _client_error(exc, {422}, {"cursor"})
        return
    assert started_at.tzinfo is not None


@FAST
@given(
    started_at=st.datetimes(
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12))])
    ),
    session_id=st.text(alphabet="ab/%'\x00é", max_size=8),
)
def test_a_well_formed_cursor_decodes_to_what_it_holds_and_never_to_a_nul(
    started_at: datetime, session_id: str
) -> None:
    raw = msgspec.json.encode([started_at.isoformat(), session_id])
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    try:
        decoded = decode_cursor(cursor)
    except ApiError as exc:
        _client_error(exc, {422}, {"cursor"})
        return
    assert decoded == (started_at.astimezone(UTC), session_id)
    assert "\x00" not in decoded[1]
