"""Creating event partitions while a long read holds `events`: ingest's INSERTs never queue behind
the DDL, a read of the days it covers does not make the DDL wait at all, and a read of every
partition (events_default included) only makes it give up and try again later."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_admin_engine
from services.common.partition_repository import DAYS_AHEAD, DAYS_BEHIND, partition_name
from services.ingest.tasks import create_missing_partitions
from tests.conftest import Services
from tests.harness import DatabaseHarness

JSON = {"Content-Type": "application/json"}


async def waiting_locks(admin_engine: AsyncEngine) -> list[tuple[str, str]]:
    """(relation, mode) of every lock request not granted."""
    async with admin_engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT relation::regclass::text, mode FROM pg_locks WHERE NOT granted AND relation IS NOT NULL")
        )
        return [(str(row[0]), str(row[1])) for row in rows]


async def until_the_ddl_waits_for_a_lock(admin_engine: AsyncEngine) -> list[tuple[str, str]]:
    async with asyncio.timeout(10):
        while True:
            waiting = await waiting_locks(admin_engine)
            if waiting:
                return waiting
            await asyncio.sleep(0.01)


@pytest.fixture
async def owner_engine(db: DatabaseHarness) -> AsyncIterator[AsyncEngine]:
    """Partition upkeep's own engine: DDL on events needs its owner (the services' role has none)."""
    engine = create_admin_engine(db.admin)
    yield engine
    await engine.dispose()


def pageviews(key: object, count: int) -> bytes:
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "event": "pageview",
            "distinctId": f"v{n}",
            "sessionId": f"s{n}",
            "timestamp": now,
            "url": "https://example.com/",
        }
        for n in range(count)
    ]
    return msgspec.json.encode({"projectKey": key, "events": events})


async def drop(admin_engine: AsyncEngine, names: list[str]) -> None:
    async with admin_engine.begin() as connection:
        for name in names:
            await connection.execute(text(f"DROP TABLE IF EXISTS {name}"))


async def stored(admin_engine: AsyncEngine, project_id: object) -> int:
    async with admin_engine.connect() as connection:
        result = await connection.execute(text("SELECT count(*) FROM events WHERE project_id = :p"), {"p": project_id})
        return int(result.scalar_one())


async def test_ingest_is_not_blocked_while_the_ddl_waits_behind_a_read_of_every_partition(
    services: Services, project: dict[str, Any], admin_engine: AsyncEngine, owner_engine: AsyncEngine
) -> None:
    # A day whose surrounding partitions do not exist yet.
    today = datetime.now(UTC).date() + timedelta(days=400)
    expected = [partition_name(today + timedelta(days=offset)) for offset in range(-DAYS_BEHIND, DAYS_AHEAD + 1)]
    try:
        async with admin_engine.connect() as dashboard:
            # The worst long read: ACCESS SHARE on events and every partition, events_default too
            # (a dashboard query whose range no partition covers reads events_default).
            await dashboard.execute(text("LOCK TABLE events IN ACCESS SHARE MODE"))
            ddl = asyncio.create_task(create_missing_partitions(owner_engine, today, lock_timeout_ms=5000, attempts=1))
            waiting = await until_the_ddl_waits_for_a_lock(admin_engine)
            # ATTACH waits for events_default only; it holds nothing on events that INSERT needs.
            assert waiting == [("events_default", "AccessExclusiveLock")]
            # Ingest's INSERTs (routed to today's partition, through its triggers) are answered
            # while the DDL still waits: they do not queue behind it. (The guard only stops a hang.)
            async with asyncio.timeout(4):
                response = await services.ingest.post(
                    "/v1/events", content=pageviews(project["publicKey"], 8), headers=JSON
                )
            assert response.status_code == 202, response.text
            assert not ddl.done()
            assert await stored(admin_engine, project["id"]) == 8
            created, still_missing = await ddl
            await dashboard.rollback()
        # Gave up at its lock timeout, nothing half made: the next pass makes all of them.
        assert created == []
        assert still_missing == expected
        async with admin_engine.connect() as connection:
            leftover = await connection.execute(
                text("SELECT count(*) FROM pg_class WHERE relname = ANY(:names)"), {"names": expected}
            )
            assert leftover.scalar_one() == 0
        created, still_missing = await create_missing_partitions(owner_engine, today, lock_timeout_ms=200)
        assert created == expected
        assert still_missing == []
    finally:
        await drop(admin_engine, expected)


async def test_partitions_are_created_during_a_long_read_of_existing_days(
    services: Services,
    project: dict[str, Any],
    db: DatabaseHarness,
    admin_engine: AsyncEngine,
    owner_engine: AsyncEngine,
) -> None:
    today = datetime.now(UTC).date() + timedelta(days=800)
    expected = [partition_name(today + timedelta(days=offset)) for offset in range(-DAYS_BEHIND, DAYS_AHEAD + 1)]
    response = await services.ingest.post("/v1/events", content=pageviews(project["publicKey"], 3), headers=JSON)
    assert response.status_code == 202, response.text
    try:
        async with admin_engine.connect() as dashboard:
            # A dashboard read of the last days (a range that partitions cover, as a dashboard's
            # is): its plan prunes events_default and the days being made.
            since, until = datetime.now(UTC) - timedelta(days=2), datetime.now(UTC) + timedelta(days=1)
            count = await dashboard.execute(
                text(
                    "SELECT count(*) FROM events"
                    " WHERE project_id = :p AND occurred_at >= :since AND occurred_at < :until"
                ),
                {"p": project["id"], "since": since, "until": until},
            )
            assert count.scalar_one() == 3
            # Still inside the read's transaction (its locks held): the DDL does not wait for it.
            async with asyncio.timeout(30):
                created, still_missing = await create_missing_partitions(
                    owner_engine, today, lock_timeout_ms=1000, attempts=1
                )
            if db.citus is None:
                assert (created, still_missing) == (expected, [])
            else:
                # A Citus coordinator locks every partition of events for a distributed read,
                # events_default too, so there ATTACH waits for the read and gives up (ingest is
                # still not blocked: the test above), and a pass after the read makes them.
                assert (created, still_missing) == ([], expected)
            await dashboard.rollback()
        if db.citus is not None:
            created, still_missing = await create_missing_partitions(owner_engine, today, lock_timeout_ms=1000)
            assert (created, still_missing) == (expected, [])
        # The attached partitions are the parent's in full: its indexes and triggers, rows routed.
        async with admin_engine.connect() as connection:
            indexes = await connection.execute(
                text(
                    "SELECT (SELECT count(*) FROM pg_index i JOIN pg_inherits h ON h.inhrelid = i.indexrelid"
                    " WHERE i.indrelid = CAST(:child AS regclass)),"
                    " (SELECT count(*) FROM pg_partitioned_table p JOIN pg_index i ON i.indrelid = p.partrelid"
                    " WHERE p.partrelid = 'events'::regclass)"
                ),
                {"child": expected[0]},
            )
            attached, parents = indexes.one()
            assert attached == parents > 0
            if db.citus is not None:
                # Distributed as it was attached, co-located with events (shards on the same workers).
                colocated = await connection.execute(
                    text(
                        "SELECT count(*) FROM pg_dist_partition child, pg_dist_partition parent"
                        " WHERE child.logicalrelid = CAST(:child AS regclass)"
                        " AND parent.logicalrelid = 'events'::regclass"
                        " AND child.colocationid = parent.colocationid"
                    ),
                    {"child": expected[0]},
                )
                assert colocated.scalar_one() == 1
    finally:
        await drop(admin_engine, expected)
