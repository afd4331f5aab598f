"""The ingest service's background work: event partition upkeep.

Creating a partition is DDL on ``events``, which only its owner may run; the services' role
(``sightline_service``, through PgBouncer) reads and writes rows and nothing else. So this
task alone connects as the owner, directly (SIGHTLINE_ADMIN_DATABASE_URL), with an engine of
its own, and only where the ingest service is given that URL. Without it, `sightline migrate` creates
the partitions (run it daily from cron); a day without one lands in ``events_default``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from litestar import Litestar

from services.common import partition_repository
from services.common.app import Lifespan
from services.common.db import create_admin_engine
from services.common.errors import is_database_unavailable
from services.common.settings import AdminDatabaseSettings

logger = logging.getLogger(__name__)

PARTITION_CHECK_INTERVAL_S = 3600


def partition_upkeep(admin: AdminDatabaseSettings | None) -> Lifespan:
    """The lifespan that keeps partitions ahead while the app serves (nothing without admin)."""

    @asynccontextmanager
    async def upkeep(app: Litestar) -> AsyncIterator[None]:
        if admin is None:
            logger.info("no SIGHTLINE_ADMIN_DATABASE_URL: event partitions are left to `sightline migrate`")
            yield
            return
        task = asyncio.create_task(keep_partitions_ahead(admin), name="event-partitions")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return upkeep


async def keep_partitions_ahead(admin: AdminDatabaseSettings) -> None:
    """Daily partitions for the days events may arrive for, checked at start and hourly."""
    engine = create_admin_engine(admin)
    try:
        while True:
            try:
                async with engine.begin() as connection:
                    created = await partition_repository.ensure_partitions_around(connection, datetime.now(UTC).date())
                if created:
                    logger.info("created event partitions: %s", ", ".join(created))
            except Exception as exc:
                # Not fatal: events_default takes rows for a missing day, and we try again.
                level = logging.WARNING if is_database_unavailable(exc) else logging.ERROR
                logger.log(level, "could not check event partitions: %s", exc)
            await asyncio.sleep(PARTITION_CHECK_INTERVAL_S)
    finally:
        await engine.dispose()
