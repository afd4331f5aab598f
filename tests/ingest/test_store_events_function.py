"""The writer's events statement lives in the repository (_INSERT_EVENTS) and ingest_store_events
(migration 0870) runs the same text, word for word, as ingest_store_replay_chunks (0890) does the
chunks' (tests/ingest/test_repository.py): its JSON record must be the writer's EventRow fields,
and the writer must go through it. The chunks' JSON record must be ChunkRow's fields."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.ingest.repository import (
    _CHUNK_RECORD,
    _EVENT_COLUMNS,
    _EVENT_KEYS,
    _EVENT_TYPES,
    _INSERT_EVENTS,
    _ROWS,
    _STORE_EVENTS,
    ChunkRow,
)

_FUNCTION_SOURCE = "SELECT prosrc FROM pg_proc WHERE proname = 'ingest_store_events'"


async def stored_events_statement(connection: AsyncConnection, document: str) -> str:
    """The function's statement on its own, with `document` (a SQL literal) as its JSON: what
    the function runs, for EXPLAIN, where EXPLAIN of the call would show only the call."""
    source = (await connection.execute(text(_FUNCTION_SOURCE))).scalar_one()
    body = source[source.index("BEGIN") + len("BEGIN") : source.rindex("END")].strip().rstrip(";")
    return body.replace("events_json", f"CAST({document} AS json)")


async def test_the_functions_json_keys_and_types_are_the_writers(admin_engine: AsyncEngine) -> None:
    async with admin_engine.connect() as connection:
        source = (await connection.execute(text(_FUNCTION_SOURCE))).scalar_one()
    selected = dict(re.findall(r"batch\.([a-z]+) AS ([a-z_]+)", source))
    assert selected == {key: column for column, key in _EVENT_KEYS.items()}
    record = re.search(r"AS batch\(([^)]*)\)", source)
    assert record is not None, source
    declared = [tuple(item.split()) for item in record.group(1).split(",")]
    assert declared == [
        (_EVENT_KEYS[column], type_) for column, type_ in zip(_EVENT_COLUMNS, _EVENT_TYPES, strict=True)
    ]


async def test_the_events_function_runs_the_repository_statement_word_for_word(admin_engine: AsyncEngine) -> None:
    """Migration 0870 holds a copy of _INSERT_EVENTS: a change to one without the other fails here."""
    async with admin_engine.connect() as connection:
        statement = await stored_events_statement(connection, "events_json")
    assert " ".join(statement.replace("CAST(events_json AS json)", "events_json").split()) == " ".join(
        _INSERT_EVENTS.replace(_ROWS, "events_json").split()
    )


def test_the_chunk_record_is_the_writers_chunk_row() -> None:
    declared = [item.split()[0] for item in _CHUNK_RECORD.split(",")]
    assert sorted(declared) == sorted(field.name for field in dataclasses.fields(ChunkRow))


async def test_the_writer_calls_the_function_which_stores_a_retry_once(
    admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    assert _STORE_EVENTS.startswith("SELECT ingest_store_events(")
    project_id = int(project["id"])
    event_uuid = uuid.uuid4()
    occurred_at = datetime.now(UTC).isoformat()
    document = (
        f'[{{"a": {project_id}, "b": "{occurred_at}", "c": "{event_uuid}", "d": "pageview", "e": "v", "f": "s",'
        ' "g": "https://example.com/a", "h": "example.com", "i": "/a", "x": false, "y": {"k": 1}},'
        f' {{"a": {project_id}, "b": "{occurred_at}", "d": "click", "e": "v", "f": "s",'
        ' "g": "https://example.com/a", "h": "example.com", "i": "/a", "x": false, "y": {}}]'
    )
    # More calls than plpgsql's five custom plans, so the kept generic plan runs too.
    for _ in range(7):
        async with admin_engine.begin() as connection:
            await connection.execute(
                text("SELECT ingest_store_events(CAST(:document AS json))"), {"document": document}
            )
    async with admin_engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT name, event_uuid = :u, path, properties FROM events WHERE project_id = :p ORDER BY name"),
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
    # The uuid-less event is a new event each time; the one with a uuid is a retry after the first.
    assert rows == [("click", False, "/a", {})] * 7 + [("pageview", True, "/a", {"k": 1})]
    assert urls == ["https://example.com/a"]
