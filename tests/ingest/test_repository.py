"""The batch's JSON travels as a dollar-quoted literal; nothing in it may end the literal; its keys are
short; the replay chunks' statement the database's function runs is the repository's own."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.repository import _EVENT_COLUMNS, _EVENT_KEYS, _INSERT_CHUNKS, _ROWS, EventRow, _dollar_quoted


@pytest.mark.parametrize(
    "document",
    ['[{"a": "plain"}]', '["$rows$"]', '["x"] $rows', "$rows", '["$rows_", "$$"]', ""],
)
def test_the_literal_closes_only_at_its_own_end(document: str) -> None:
    quoted = _dollar_quoted(document)
    tag = quoted[: quoted.index("$", 1) + 1]
    assert quoted == f"{tag}{document}{tag}"
    # Postgres ends a dollar-quoted string at the first closing tag after the opening one.
    assert quoted.index(tag, len(tag)) == len(quoted) - len(tag)


def test_every_column_has_its_own_short_key_and_nulls_stay_out_of_the_document() -> None:
    assert list(EventRow.__struct_fields__) == _EVENT_COLUMNS
    assert len(set(_EVENT_KEYS.values())) == len(_EVENT_COLUMNS)
    row = EventRow(
        project_id=7,
        occurred_at=datetime(2026, 11, 30, 7, 0, tzinfo=UTC),
        name="pageview",
        distinct_id="v",
        session_id="s",
        url="https://example.com/",
        domain="example.com",
        path="/",
        is_bot=False,
        properties={},
    )
    assert msgspec.json.decode(msgspec.json.encode([row])) == [
        {"a": 7, "b": "2026-11-30T07:00:00Z", "d": "pageview", "e": "v", "f": "s", "g": "https://example.com/",
         "h": "example.com", "i": "/", "x": False, "y": {}}
    ]  # fmt: skip


async def test_the_replay_writer_function_runs_the_repository_statement_word_for_word(
    admin_engine: AsyncEngine,
) -> None:
    """Migration 0890 holds a copy of _INSERT_CHUNKS: a change to one without the other fails here."""
    async with admin_engine.connect() as connection:
        source = (
            await connection.execute(text("SELECT prosrc FROM pg_proc WHERE proname = 'ingest_store_replay_chunks'"))
        ).scalar_one()
    expected = "BEGIN " + _INSERT_CHUNKS.replace(_ROWS, "chunk_rows") + " ; END"
    assert " ".join(source.split()) == " ".join(expected.split())
