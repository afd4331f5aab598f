"""All SQL that manages the daily partitions of ``events``. Callers own the transaction.

Partitions are named ``events_pYYYYMMDD`` and cover one UTC day. They are created ahead of
time (by ``sightline migrate`` and by the ingest service at start and every hour), so rows
land in ``events_default`` only for days outside every partition.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

logger = logging.getLogger(__name__)

# Partitions exist for the days an event may still arrive for (ingest refuses events older
# than a week) and for two weeks ahead, so a partition that cannot get its lock today has days
# of retries before any event needs it.
DAYS_BEHIND = 8
DAYS_AHEAD = 14

# Any constant works; it only has to be the same for every process that creates partitions.
_PARTITION_DDL_LOCK = 7_345_001


def partition_name(day: date) -> str:
    return f"events_p{day:%Y%m%d}"


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


async def existing_event_partitions(connection: AsyncConnection) -> set[str]:
    result = await connection.execute(
        text(
            "SELECT child.relname FROM pg_inherits"
            " JOIN pg_class parent ON parent.oid = pg_inherits.inhparent"
            " JOIN pg_class child ON child.oid = pg_inherits.inhrelid"
            " WHERE parent.relname = 'events' AND parent.relnamespace = 'public'::regnamespace"
        )
    )
    return set(result.scalars())


async def ensure_event_partitions(connection: AsyncConnection, first_day: date, last_day: date) -> list[str]:
    """Create the missing daily partitions from first_day to last_day; return the names created."""
    created: list[str] = []
    day = first_day
    while day <= last_day:
        if await create_event_partition(connection, day):
            created.append(partition_name(day))
        day += timedelta(days=1)
    return created


async def missing_event_partitions(connection: AsyncConnection, first_day: date, last_day: date) -> list[date]:
    existing = await existing_event_partitions(connection)
    days = [first_day + timedelta(days=offset) for offset in range((last_day - first_day).days + 1)]
    return [day for day in days if partition_name(day) not in existing]


async def create_event_partition(connection: AsyncConnection, day: date, lock_timeout_ms: int | None = None) -> bool:
    """Create day's partition unless it exists; True if created.

    Never ``CREATE TABLE ... PARTITION OF events``: that takes an ACCESS EXCLUSIVE lock on
    ``events``, which waits behind any long read (a dashboard query, a rollup rebuild) and makes
    every INSERT queue behind the wait. Instead the day is made as a table of its own (``LIKE
    events``, which only reads the parent's definition), given a CHECK constraint matching its
    range, and then attached. ``ATTACH PARTITION`` takes SHARE UPDATE EXCLUSIVE on ``events``,
    which neither INSERT nor SELECT conflicts with; the CHECK lets it skip the scan proving the
    rows fit; it creates the parent's indexes and triggers on the (empty) table. It also takes
    ACCESS EXCLUSIVE on ``events_default``, whose implicit range shrinks (and scans it for rows of
    the day): a read of the default partition in progress makes it wait, and with
    lock_timeout_ms it gives up (LockNotAvailable, SQLSTATE 55P03; the caller tries again later;
    partitions are made days ahead). While it waits, only statements that touch
    ``events_default`` queue behind it, not INSERTs routed to a day's partition.

    On Citus the same statements work: ``LIKE`` makes a local table on the coordinator, and
    attaching it to the distributed ``events`` distributes it co-located first.
    """
    if lock_timeout_ms is not None:
        # SET cannot take a bind parameter; the value is an int.
        await connection.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'"))
    # Two ingest workers starting together would otherwise race on CREATE TABLE.
    await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PARTITION_DDL_LOCK})
    name = partition_name(day)
    if name in await existing_event_partitions(connection):
        return False
    start, end = _bounds(day)
    rows_in_default = await connection.execute(
        text("SELECT EXISTS (SELECT 1 FROM events_default WHERE occurred_at >= :start AND occurred_at < :end)"),
        {"start": start, "end": end},
    )
    if rows_in_default.scalar_one():
        # Postgres refuses a partition whose range already has rows in the default
        # partition; that day stays in events_default, where queries still see it.
        logger.warning("events_default holds rows for %s; partition %s not created", day, name)
        return False
    # The name and bounds come from a date object, never from input.
    bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    # A table left behind by an earlier try that failed after its CREATE cannot exist: the
    # CREATE and the ATTACH are in one transaction. Indexes are left to ATTACH, which names
    # them as PARTITION OF would.
    await connection.execute(text(f"CREATE TABLE {name} (LIKE events INCLUDING ALL EXCLUDING INDEXES)"))
    await connection.execute(
        text(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_range"
            f" CHECK (occurred_at >= '{start.isoformat()}' AND occurred_at < '{end.isoformat()}')"
        )
    )
    await connection.execute(text(f"ALTER TABLE events ATTACH PARTITION {name} FOR VALUES {bounds}"))
    return True


async def ensure_partitions_around(connection: AsyncConnection, today: date) -> list[str]:
    return await ensure_event_partitions(
        connection, today - timedelta(days=DAYS_BEHIND), today + timedelta(days=DAYS_AHEAD)
    )
