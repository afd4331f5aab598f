"""The batch writer under hostile input: counters that cannot overflow, one bad submission failing
alone, a queue bounded in bytes, and submissions whose request gave up not written later."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import ApiError, ServiceUnavailable
from services.ingest.repository import ChunkRow
from services.ingest.writer import BatchWriter, WriterLimits
from tests.rows import chunk_row, event_row

BIGINT_MAX = 2**63 - 1


def limits(**overrides: Any) -> WriterLimits:
    values: dict[str, Any] = {
        "linger_s": 0.2,  # long enough for every submission of a test to share one batch
        "max_batch_rows": 500,
        "max_batch_chunk_bytes": 8 * 1024 * 1024,
        "max_queue_rows": 50_000,
        "concurrency": 1,
        "commit_timeout_s": 10.0,
    }
    values.update(overrides)
    return WriterLimits(**values)


@pytest.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[BatchWriter]:
    batch_writer = BatchWriter(engine, limits())
    await batch_writer.start()
    yield batch_writer
    await batch_writer.close()


def chunk_with_clicks(project_id: int, session_id: str, seq: int, clicks: int, data: bytes = b"{}") -> ChunkRow:
    return chunk_row(project_id, session_id, seq, event_count=clicks + 1, click_count=clicks, data=data)


async def scalar(admin_engine: AsyncEngine, sql: str, **parameters: Any) -> Any:
    async with admin_engine.begin() as connection:
        result = await connection.execute(text(sql), parameters)
        return result.scalar() if result.returns_rows else None


async def set_click_count(admin_engine: AsyncEngine, project_id: int, session_id: str, clicks: int) -> None:
    """Only a direct UPDATE can bring a session's counter near its limit."""
    await scalar(
        admin_engine,
        "UPDATE replay_sessions SET click_count = :clicks WHERE project_id = :p AND session_id = :s",
        clicks=clicks,
        p=project_id,
        s=session_id,
    )


async def test_a_session_counts_past_2_to_the_31_without_failing(
    writer: BatchWriter, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    project_id = int(project["id"])
    await writer.submit([], [chunk_with_clicks(project_id, "long", 0, clicks=1)])
    await set_click_count(admin_engine, project_id, "long", 2147483647)
    await writer.submit([], [chunk_with_clicks(project_id, "long", 1, clicks=2)])
    clicks = await scalar(
        admin_engine,
        "SELECT click_count FROM replay_sessions WHERE project_id = :p AND session_id = 'long'",
        p=project_id,
    )
    assert clicks == 2147483649


async def test_a_submission_the_database_refuses_fails_alone_and_its_batch_neighbours_are_stored(
    writer: BatchWriter, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    project_id = int(project["id"])
    await writer.submit([], [chunk_with_clicks(project_id, "full", 0, clicks=1)])
    # The one counter a further click would overflow.
    await set_click_count(admin_engine, project_id, "full", BIGINT_MAX)
    good_events = [[event_row(project_id)] for _ in range(6)]
    good_chunks = [chunk_with_clicks(project_id, f"fine-{n}", 0, clicks=1) for n in range(3)]
    outcomes = await asyncio.gather(
        *(writer.submit(rows, []) for rows in good_events[:3]),
        writer.submit([], [chunk_with_clicks(project_id, "full", 1, clicks=1)]),
        *(writer.submit([], [chunk]) for chunk in good_chunks),
        *(writer.submit(rows, []) for rows in good_events[3:]),
        return_exceptions=True,
    )
    refused = outcomes.pop(3)
    assert outcomes == [None] * 9
    assert isinstance(refused, ApiError)
    assert (refused.status_code, refused.code) == (422, "rejected_by_database")
    assert await scalar(admin_engine, "SELECT count(*) FROM events WHERE project_id = :p", p=project_id) == 6
    assert await scalar(admin_engine, "SELECT count(*) FROM replay_chunks WHERE project_id = :p", p=project_id) == 4


async def test_the_queue_is_bounded_in_bytes(engine: AsyncEngine, project: dict[str, Any]) -> None:
    batch_writer = BatchWriter(engine, limits(max_queue_bytes=100_000))
    await batch_writer.start()
    try:
        with pytest.raises(ServiceUnavailable) as full:
            await batch_writer.submit([], [chunk_row(int(project["id"]), "big", 0, data=b"x" * 200_000)])
    finally:
        await batch_writer.close()
    assert full.value.code == "writer_queue_full"
    assert batch_writer.queued_bytes == 0


async def test_a_submission_whose_request_gave_up_is_not_written_later(
    engine: AsyncEngine, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    # One writer task, whose first batch waits on a lock held here; the requests wait only 0.1 s.
    project_id = int(project["id"])
    batch_writer = BatchWriter(engine, limits(linger_s=0.05, commit_timeout_s=0.1))
    await batch_writer.start()
    try:
        async with admin_engine.connect() as holder:
            transaction = await holder.begin()
            await holder.execute(text("LOCK TABLE ingested_events IN SHARE MODE"))
            in_flight = asyncio.create_task(batch_writer.submit([event_row(project_id)], []))
            await asyncio.sleep(0.05)  # taken at once (the lane was idle), now blocked on the lock
            with pytest.raises(ServiceUnavailable) as gave_up:
                await batch_writer.submit([event_row(project_id)], [])  # queued behind it
            assert gave_up.value.code == "commit_timeout"
            with pytest.raises(ServiceUnavailable):
                await in_flight  # its request gave up too, but its batch is already being written
            await transaction.rollback()
        await asyncio.sleep(1.0)  # the first batch commits; the writer takes (and drops) the second
        assert batch_writer.queued_bytes == 0
    finally:
        await batch_writer.close()
    # Only the batch that held its submission before the request gave up was written.
    assert batch_writer.rows_committed == 1
    assert await scalar(admin_engine, "SELECT count(*) FROM events WHERE project_id = :p", p=project_id) == 1


async def test_any_bytes_are_stored_exactly_as_given(
    writer: BatchWriter, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    """The bytes travel as base64 in the batch's JSON: every byte value, every padding length
    (0-2 '=' for lengths 0, 1 and 2 modulo 3), and chunks stored inline and out of line."""
    project_id = int(project["id"])
    every_byte = bytes(range(256))
    bodies = [b"", b"\x00", b"\xff\x00", b"$rows$\x00", every_byte, every_byte * 7 + b"\x1f\x8b", os.urandom(70_001)]
    await asyncio.gather(
        *(writer.submit([], [chunk_row(project_id, "bytes", seq, data=body)]) for seq, body in enumerate(bodies))
    )
    async with admin_engine.begin() as connection:
        stored = (
            await connection.execute(
                text(
                    "SELECT data, byte_size FROM replay_chunks"
                    " WHERE project_id = :p AND session_id = 'bytes' ORDER BY seq"
                ),
                {"p": project_id},
            )
        ).all()
    assert [(bytes(row.data), row.byte_size) for row in stored] == [(body, len(body)) for body in bodies]
    total = await scalar(
        admin_engine,
        "SELECT total_bytes FROM replay_sessions WHERE project_id = :p AND session_id = 'bytes'",
        p=project_id,
    )
    assert total == sum(len(body) for body in bodies)
