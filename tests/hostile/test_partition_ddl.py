"""Creating event partitions while a long read holds `events`: the DDL gives up, readers and
writers do not queue behind it, and a later pass creates what is missing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_admin_engine
from services.common.partition_repository import DAYS_AHEAD, DAYS_BEHIND, partition_name
from services.ingest.tasks import create_missing_partitions
from tests.harness import DatabaseHarness


async def until_the_ddl_waits_for_its_lock(admin_engine: AsyncEngine) -> None:
    async with asyncio.timeout(10):
        while True:
            async with admin_engine.connect() as connection:
                waiting = await connection.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE relation = 'events'::regclass"
                        " AND mode = 'AccessExclusiveLock' AND NOT granted"
                    )
                )
                if waiting.scalar_one():
                    return
            await asyncio.sleep(0.01)


@pytest.fixture
async def owner_engine(db: DatabaseHarness) -> AsyncIterator[AsyncEngine]:
    """Partition upkeep's own engine: DDL on events needs its owner (the services' role has none)."""
    engine = create_admin_engine(db.admin)
    yield engine
    await engine.dispose()


async def test_partition_ddl_behind_a_long_read_gives_up_instead_of_blocking_ingest(
    engine: AsyncEngine, admin_engine: AsyncEngine, owner_engine: AsyncEngine
) -> None:
    # A day whose surrounding partitions do not exist yet.
    today = datetime.now(UTC).date() + timedelta(days=400)
    expected = [partition_name(today + timedelta(days=offset)) for offset in range(-DAYS_BEHIND, DAYS_AHEAD + 1)]
    async with admin_engine.connect() as dashboard:
        # A long dashboard query: holds ACCESS SHARE on events until it ends.
        await dashboard.execute(text("LOCK TABLE events IN ACCESS SHARE MODE"))
        ddl = asyncio.create_task(
            create_missing_partitions(owner_engine, today, lock_timeout_ms=1000, attempts=2, pause_s=lambda _: 0.1)
        )
        await until_the_ddl_waits_for_its_lock(admin_engine)
        # Another reader (or an INSERT) arriving while the DDL waits queues behind it, and is
        # answered once the DDL's wait ends at its lock timeout, while the long read goes on.
        # (Without the timeout it would wait as long as the long read.) A guard against hanging.
        async with asyncio.timeout(10), engine.connect() as reader:
            count = (await reader.execute(text("SELECT count(*) FROM events WHERE false"))).scalar_one()
        created, still_missing = await ddl
        await dashboard.rollback()
    assert count == 0
    assert created == []
    assert still_missing == expected

    created, still_missing = await create_missing_partitions(owner_engine, today, lock_timeout_ms=200)
    try:
        assert created == expected
        assert still_missing == []
    finally:
        async with admin_engine.begin() as connection:
            for name in created:
                await connection.execute(text(f"DROP TABLE {name}"))
