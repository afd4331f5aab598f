"""Ingest keeps event partitions ahead as the owner; its requests run as the services' role."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import partition_repository
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.harness import DatabaseHarness


async def _partitions(admin_engine: AsyncEngine) -> set[str]:
    async with admin_engine.connect() as connection:
        return await partition_repository.existing_event_partitions(connection)


async def test_ingest_creates_a_missing_partition_on_the_owners_connection(
    db: DatabaseHarness, admin_engine: AsyncEngine
) -> None:
    # The last day upkeep covers: no event can be stored for it yet (timestamps after the
    # receive time are set to it), so dropping it disturbs no other test.
    last_day = datetime.now(UTC).date() + timedelta(days=partition_repository.DAYS_AHEAD)
    name = partition_repository.partition_name(last_day)
    async with admin_engine.begin() as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
    assert name not in await _partitions(admin_engine)

    app = create_app(db.database, settings=IngestSettings(), admin_database=db.admin)
    async with AsyncTestClient(app):
        for _ in range(100):
            if name in await _partitions(admin_engine):
                break
            await asyncio.sleep(0.1)
    assert name in await _partitions(admin_engine)
    async with admin_engine.connect() as connection:
        owner = await connection.execute(
            text("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = :n"), {"n": name}
        )
        assert owner.scalar_one() == "sightline"
