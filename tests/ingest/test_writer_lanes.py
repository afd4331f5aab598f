"""The batch writer's lanes: events commit in their own transactions, so an events request does
not wait for a batch of replay chunks (their statement, their bytes' WAL and its flush).

A replay session's row is held by another transaction, so a chunk of that session cannot commit;
events submitted meanwhile are committed (and acknowledged) with split lanes, and wait behind the
chunk with one shared queue. Either way nothing is acknowledged before its commit."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.writer import BatchWriter, WriterLimits
from tests.rows import chunk_row, event_row


def limits(split_lanes: bool) -> WriterLimits:
    return WriterLimits(
        linger_s=0.0,
        max_batch_rows=500,
        max_batch_chunk_bytes=8 * 1024 * 1024,
        max_queue_rows=50_000,
        concurrency=1,
        commit_timeout_s=30.0,
        split_lanes=split_lanes,
    )


async def count(admin_engine: AsyncEngine, table: str, project_id: int) -> int:
    async with admin_engine.connect() as connection:
        result = await connection.execute(
            text(f"SELECT count(*) FROM {table} WHERE project_id = :p"), {"p": project_id}
        )
        return int(result.scalar_one())


@pytest.mark.parametrize("split_lanes", [True, False])
async def test_events_commit_while_a_chunk_batch_waits_only_with_split_lanes(
    engine: AsyncEngine, admin_engine: AsyncEngine, project: dict[str, Any], split_lanes: bool
) -> None:
    project_id = int(project["id"])
    writer = BatchWriter(engine, limits(split_lanes))
    await writer.start()
    try:
        await writer.submit([], [chunk_row(project_id, "held", 0)])
        async with admin_engine.connect() as holder:
            transaction = await holder.begin()
            await holder.execute(
                text("SELECT 1 FROM replay_sessions WHERE project_id = :p AND session_id = 'held' FOR UPDATE"),
                {"p": project_id},
            )
            chunk = asyncio.create_task(writer.submit([], [chunk_row(project_id, "held", 1)]))
            await asyncio.sleep(0.3)  # the chunk's batch is in flight, blocked on the session row
            assert not chunk.done()
            events = asyncio.create_task(writer.submit([event_row(project_id) for _ in range(8)], []))
            if split_lanes:
                await asyncio.wait_for(events, timeout=20)
                assert await count(admin_engine, "events", project_id) == 8
                assert not chunk.done()
            else:
                await asyncio.sleep(1.0)
                # Queued behind the blocked batch: neither committed nor acknowledged.
                assert not events.done()
                assert await count(admin_engine, "events", project_id) == 0
            await transaction.rollback()
        await asyncio.wait_for(asyncio.gather(chunk, events), timeout=20)
    finally:
        await writer.close()
    assert await count(admin_engine, "events", project_id) == 8
    assert await count(admin_engine, "replay_chunks", project_id) == 2


async def test_an_idle_lane_does_not_linger(
    engine: AsyncEngine, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    """The linger only gathers requests while another batch of the lane is being written: with
    nothing in flight a request's rows go at once, not after linger_s (here 30 s)."""
    project_id = int(project["id"])
    writer = BatchWriter(engine, replace(limits(split_lanes=True), linger_s=30.0))
    await writer.start()
    try:
        await asyncio.wait_for(writer.submit([event_row(project_id)], []), timeout=10)
        await asyncio.wait_for(writer.submit([], [chunk_row(project_id, "idle", 0)]), timeout=10)
    finally:
        await writer.close()
    assert await count(admin_engine, "events", project_id) == 1
