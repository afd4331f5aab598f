"""The ingest service's background work: daily event partitions kept ahead, never making ingest wait on DDL.

Creating a partition is DDL on ``events``, which only its owner may run; the services' role
(``sightline_service``, through PgBouncer) reads and writes rows and nothing else. So this
task alone connects as the owner, directly (SIGHTLINE_ADMIN_DATABASE_URL), with an engine of
its own, and only where the ingest service is given that URL. Without it, `sightline migrate` creates
the partitions (run it daily from cron); a day without one lands in ``events_default``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta

import asyncpg
from litestar import Litestar
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import partition_repository
from services.common.app import Lifespan, running_in_background
from services.common.db import create_admin_engine
from services.common.errors import is_database_unavailable
from services.common.settings import AdminDatabaseSettings

logger = logging.getLogger(__name__)

PARTITION_CHECK_INTERVAL_S = 3600
# After a pass that left a partition missing (lock not granted, database away).
PARTITION_RETRY_INTERVAL_S = 60
# How long ATTACH PARTITION may wait for its ACCESS EXCLUSIVE lock on `events_default`
# (partition_repository.create_event_partition). Statements that touch events_default (reads
# that no partition's range prunes it from) queue behind it meanwhile; INSERTs routed to a
# day's partition do not, nor does anything on `events` itself (SHARE UPDATE EXCLUSIVE there).
PARTITION_LOCK_TIMEOUT_MS = 200
PARTITION_ATTEMPTS = 5


def partition_upkeep(admin: AdminDatabaseSettings | None) -> Lifespan:
    """The lifespan that keeps partitions ahead while the app serves (nothing without admin)."""

    @asynccontextmanager
    async def upkeep(app: Litestar) -> AsyncIterator[None]:
        if admin is None:
            logger.info("no SIGHTLINE_ADMIN_DATABASE_URL: event partitions are left to `sightline migrate`")
            yield
            return
        engine = create_admin_engine(admin)
        try:
            async with running_in_background(keep_partitions_ahead(engine), "event-partitions"):
                yield
        finally:
            await engine.dispose()

    return upkeep


async def create_missing_partitions(
    engine: AsyncEngine,
    today: date,
    lock_timeout_ms: int = PARTITION_LOCK_TIMEOUT_MS,
    attempts: int = PARTITION_ATTEMPTS,
    pause_s: Callable[[int], float] = lambda attempt: random.uniform(0.5, 1.0) * 2**attempt,
) -> tuple[list[str], list[str]]:
    """(created, still missing): each partition in its own short transaction, retried on lock timeouts."""
    first, last = (
        today - timedelta(days=partition_repository.DAYS_BEHIND),
        today + timedelta(days=partition_repository.DAYS_AHEAD),
    )
    async with engine.connect() as connection:
        missing = await partition_repository.missing_event_partitions(connection, first, last)
        await connection.rollback()
    created: list[str] = []
    still_missing: list[str] = []
    for index, day in enumerate(missing):
        name = partition_repository.partition_name(day)
        for attempt in range(attempts):
            try:
                async with engine.begin() as connection:
                    if await partition_repository.create_event_partition(connection, day, lock_timeout_ms):
                        created.append(name)
                break
            except DBAPIError as exc:
                if not _is_lock_timeout(exc):
                    raise
                logger.info("partition %s: lock on events not granted in %d ms; retrying", name, lock_timeout_ms)
                if attempt + 1 < attempts:
                    await asyncio.sleep(pause_s(attempt))
        else:
            # The lock is busy now; the later days would wait for the same one. Next pass.
            still_missing = [partition_repository.partition_name(later) for later in missing[index:]]
            break
    return created, still_missing


async def keep_partitions_ahead(engine: AsyncEngine) -> None:
    """Daily partitions for the days events may arrive for, checked at start and hourly."""
    while True:
        interval = PARTITION_CHECK_INTERVAL_S
        try:
            created, still_missing = await create_missing_partitions(engine, datetime.now(UTC).date())
            if created:
                logger.info("created event partitions: %s", ", ".join(created))
            if still_missing:
                logger.warning("event partitions not created yet (events busy): %s", ", ".join(still_missing))
                interval = PARTITION_RETRY_INTERVAL_S
        except Exception as exc:
            # Not fatal: events_default takes rows for a missing day, and we try again.
            level = logging.WARNING if is_database_unavailable(exc) else logging.ERROR
            logger.log(level, "could not check event partitions: %s", exc)
            interval = PARTITION_RETRY_INTERVAL_S
        await asyncio.sleep(interval)


def _is_lock_timeout(exc: DBAPIError) -> bool:
    # SQLAlchemy wraps its adapter's exception, which wraps asyncpg's.
    driver_error = exc.orig.__cause__ if exc.orig is not None and exc.orig.__cause__ is not None else exc.orig
    return isinstance(driver_error, asyncpg.LockNotAvailableError)
