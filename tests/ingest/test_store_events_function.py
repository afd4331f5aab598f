"""The writer's statements live in the repository (_FUNCTION_BODY: the chunks' _INSERT_CHUNKS,
then the events' _INSERT_EVENTS) and ingest_store_batch (migration 1040) runs the same text,
word for word, with one array parameter per column: its parameters must be the writer's
EventRow and ChunkRow fields, and the writer must go through it, with binary parameters over
PgBouncer, one batch a message."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db import asyncpg_connection
from services.ingest import repository
from services.ingest.repository import (
    _CHUNK_COLUMNS,
    _EVENT_COLUMNS,
    _EVENT_PARAMETERS,
    _EVENT_TYPES,
    _FUNCTION_BODY,
    _FUNCTION_PARAMETERS,
    _INSERT_EVENTS,
    _STORE_BATCH,
    ChunkRow,
    EventRow,
)

_FUNCTION_SOURCE = "SELECT prosrc FROM pg_proc WHERE proname = 'ingest_store_batch'"


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dict):
        value = repository._encode_json(value).decode()
    elif isinstance(value, datetime):
        value = value.isoformat()
    text_value = str(value).lower() if isinstance(value, bool) else str(value)
    return "'" + text_value.replace("'", "''") + "'"


async def stored_events_statement(connection: AsyncConnection, rows: list[EventRow]) -> str:
    """The function's events statement on its own, its arrays written as literals of `rows`'
    columns: what the function runs, for EXPLAIN, where EXPLAIN of the call would show only the
    call. Read from the database's function, so it is what the database runs."""
    source = (await connection.execute(text(_FUNCTION_SOURCE))).scalar_one()
    start = source.index("WITH input", source.index("cardinality(in_event_project_id)"))
    body = source[start : source.rindex(";", start, source.rindex("END IF"))]
    literals = {
        parameter: f"ARRAY[{', '.join(_sql_literal(getattr(row, column)) for row in rows)}]::{type_}[]"
        for parameter, column, type_ in zip(_EVENT_PARAMETERS, _EVENT_COLUMNS, _EVENT_TYPES, strict=True)
    }
    return re.sub(r"\bin_event_[a-z_]+\b", lambda match: literals[match.group(0)], body)


async def test_the_function_runs_the_repository_statements_word_for_word(admin_engine: AsyncEngine) -> None:
    """Migration 1040 holds a copy of _FUNCTION_BODY: a change to one without the other fails here."""
    async with admin_engine.connect() as connection:
        source = (await connection.execute(text(_FUNCTION_SOURCE))).scalar_one()
        arguments = (
            await connection.execute(
                text("SELECT pg_get_function_arguments(oid) FROM pg_proc WHERE proname = 'ingest_store_batch'")
            )
        ).scalar_one()
    assert " ".join(source.split()) == " ".join(_FUNCTION_BODY.split())
    # Postgres spells timestamptz out.
    assert " ".join(arguments.replace("timestamp with time zone", "timestamptz").split()) == " ".join(
        _FUNCTION_PARAMETERS.split()
    )
    assert _INSERT_EVENTS in _FUNCTION_BODY


def test_the_arrays_are_the_writers_rows() -> None:
    assert list(EventRow.__struct_fields__) == _EVENT_COLUMNS
    assert sorted(_CHUNK_COLUMNS) == sorted(field.name for field in dataclasses.fields(ChunkRow))
    assert _STORE_BATCH.startswith("SELECT ingest_store_batch($1::bigint[], ")
    assert _STORE_BATCH.count("$") == len(_CHUNK_COLUMNS) + len(_EVENT_COLUMNS)


def _event(project_id: int, name: str, event_uuid: uuid.UUID | None, **overrides: Any) -> EventRow:
    fields: dict[str, Any] = {
        "project_id": project_id,
        "occurred_at": datetime.now(UTC),
        "event_uuid": event_uuid,
        "name": name,
        "distinct_id": "v",
        "session_id": "s",
        "url": "https://example.com/a",
        "domain": "example.com",
        "path": "/a",
        "is_bot": False,
        "properties": {},
    }
    return EventRow(**(fields | overrides))


def _chunk(project_id: int, seq: int, data: bytes) -> ChunkRow:
    at = datetime(2026, 11, 30, 12, 0, seq, tzinfo=UTC)
    return ChunkRow(
        project_id=project_id, session_id="s", seq=seq, first_timestamp=at, last_timestamp=at, event_count=2,
        has_full_snapshot=seq == 0, content_encoding="gzip", data=data, distinct_id="v", click_count=1,
        page_count=1, active_ms=500, first_url="https://example.com/a" if seq == 0 else None, country="DE",
        browser="Firefox", os="Linux", device_type="desktop",
    )  # fmt: skip


async def test_the_writer_stores_a_batch_through_pgbouncer_and_a_retry_once(
    engine: AsyncEngine, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    """Through the services' engine (PgBouncer, unnamed statements): more calls than plpgsql's
    five custom plans, so the kept generic plan runs too, on whichever server connection."""
    project_id = int(project["id"])
    event_uuid = uuid.uuid4()
    # Bytes a text form would mangle: NUL, invalid UTF-8, the dollar tag of the old literal.
    data = b"\x00\xff$rows$\x1f\x8b"
    for _ in range(7):
        events = [
            _event(project_id, "pageview", event_uuid, title='it\'s "quoted" \\ $rows$', properties={"k": 1}),
            _event(project_id, "click", None, properties={"nested": {"a": [1, None, "x"]}}),
        ]
        async with engine.connect() as connection:
            await repository.write_batch(await asyncpg_connection(connection), events, [_chunk(project_id, 0, data)])
    async with engine.connect() as connection:
        # Chunks alone, and events alone: each array set may be empty.
        driver = await asyncpg_connection(connection)
        await repository.write_batch(driver, [], [_chunk(project_id, 1, b"")])
        await repository.write_batch(driver, [_event(project_id, "alone", None)], [])
    async with admin_engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT name, event_uuid = :u, title, properties FROM events WHERE project_id = :p"
                    " ORDER BY name, title"
                ),
                {"p": project_id, "u": event_uuid},
            )
        ).all()
        urls = (
            (
                await connection.execute(
                    text("SELECT url FROM event_session_urls WHERE project_id = :p"), {"p": project_id}
                )
            )
            .scalars()
            .all()
        )
        chunks = (
            await connection.execute(
                text("SELECT seq, data, byte_size FROM replay_chunks WHERE project_id = :p ORDER BY seq"),
                {"p": project_id},
            )
        ).all()
        session = (
            await connection.execute(
                text(
                    "SELECT chunk_count, total_bytes, click_count, first_url, country FROM replay_sessions"
                    " WHERE project_id = :p"
                ),
                {"p": project_id},
            )
        ).one()
    # The uuid-less event is a new event each time; the one with a uuid is a retry after the first.
    assert rows == [("alone", False, None, {})] + [("click", False, None, {"nested": {"a": [1, None, "x"]}})] * 7 + [
        ("pageview", True, 'it\'s "quoted" \\ $rows$', {"k": 1})
    ]
    assert urls == ["https://example.com/a"]
    # The chunk retried six times is stored and counted once.
    assert chunks == [(0, data, len(data)), (1, b"", 0)]
    assert tuple(session) == (2, len(data), 2, "https://example.com/a", "DE")
