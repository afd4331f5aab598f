"""The batch travels as one array per column: ingest_store_batch's parameters in their order,
each list as long as its table's rows, `properties` as JSON text and a chunk's bytes as they are."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec

from services.ingest.repository import _CHUNK_COLUMNS, _EVENT_COLUMNS, ChunkRow, EventRow, batch_arguments

AT = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def test_each_column_is_one_list_in_the_functions_order() -> None:
    event_uuid = uuid.uuid4()
    events = [
        EventRow(project_id=7, occurred_at=AT, event_uuid=event_uuid, name="pageview", distinct_id="v",
                 session_id="s", url="https://example.com/", domain="example.com", path="/", is_bot=False,
                 properties={"plan": "pro", "n": [1, None]}),
        EventRow(project_id=7, occurred_at=AT, name="click", distinct_id="v", session_id="s",
                 url="https://example.com/", domain="example.com", path="/", title="T", is_bot=True, properties={}),
    ]  # fmt: skip
    chunk = ChunkRow(
        project_id=7, session_id="s", seq=3, first_timestamp=AT, last_timestamp=AT, event_count=1,
        has_full_snapshot=False, content_encoding="gzip", data=b"\x00\xff", distinct_id="v", click_count=0,
        page_count=0, active_ms=0, first_url=None, country=None, browser=None, os=None, device_type=None,
    )  # fmt: skip
    arguments = batch_arguments(events, [chunk])
    assert len(arguments) == len(_CHUNK_COLUMNS) + len(_EVENT_COLUMNS)
    by_chunk_column = dict(zip(_CHUNK_COLUMNS, arguments, strict=False))
    by_event_column = dict(zip(_EVENT_COLUMNS, arguments[len(_CHUNK_COLUMNS) :], strict=True))
    assert by_chunk_column["data"] == [b"\x00\xff"]
    assert by_chunk_column["seq"] == [3]
    assert by_event_column["event_uuid"] == [event_uuid, None]
    assert by_event_column["title"] == [None, "T"]
    assert by_event_column["is_bot"] == [False, True]
    assert [msgspec.json.decode(text) for text in by_event_column["properties"]] == [
        {"plan": "pro", "n": [1, None]},
        {},
    ]
    assert batch_arguments([], []) == [[]] * (len(_CHUNK_COLUMNS) + len(_EVENT_COLUMNS))
