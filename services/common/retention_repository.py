"""All SQL of data retention: expired events, recordings and idempotency keys. Callers own the transaction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.models import Event, IngestedEvent, Project, ReplayChunk, ReplaySession
from services.common.models.query_session import ended_at_before, ended_at_or_after
from services.common.partition_repository import existing_event_partitions

_DAILY_PARTITION = re.compile(r"events_p(\d{8})")


@dataclass(frozen=True)
class ProjectRetention:
    project_id: int
    retention_days: int
    timezone: str


async def project_retentions(connection: AsyncConnection) -> list[ProjectRetention]:
    result = await connection.execute(
        select(Project.project_id, Project.retention_days, Project.timezone).order_by(Project.project_id)
    )
    return [ProjectRetention(row.project_id, row.retention_days, row.timezone) for row in result]


async def daily_partitions_ending_by(connection: AsyncConnection, end: datetime) -> list[str]:
    """Daily partitions of ``events`` whose whole day lies before ``end`` (a UTC instant)."""
    names: list[tuple[date, str]] = []
    for name in await existing_event_partitions(connection):
        match = _DAILY_PARTITION.fullmatch(name)
        if match is None:
            continue  # events_default, or something an operator made by hand
        day = datetime.strptime(match.group(1), "%Y%m%d").date()
        day_end = datetime(day.year, day.month, day.day, tzinfo=end.tzinfo) + timedelta(days=1)
        if day_end <= end:
            names.append((day, name))
    return [name for _, name in sorted(names)]


async def drop_event_partition(connection: AsyncConnection, name: str, lock_timeout_ms: int) -> None:
    if _DAILY_PARTITION.fullmatch(name) is None:
        raise ValueError(f"not a daily events partition: {name!r}")
    # DROP needs an exclusive lock on the parent; waiting behind a long query would queue
    # every ingest insert behind this statement, so give up instead and retry next run.
    await connection.execute(
        text("SELECT set_config('lock_timeout', :value, true)"), {"value": f"{int(lock_timeout_ms)}ms"}
    )
    # The name matched the pattern above, so it is safe to put in the statement.
    await connection.execute(text(f"DROP TABLE {name}"))


async def delete_session_urls_before(connection: AsyncConnection, project_id: int, cutoff: datetime) -> int:
    """The sessions' URLs (event_session_urls) first seen before the cutoff; run it before ``delete_sessions_before``.

    A URL its session visited again after the cutoff is put back with its first kept event's
    time, found from the query_sessions rows that still straddle the cutoff (hence before
    ``delete_sessions_before`` and ``recompute_straddling_sessions``): their events after the
    cutoff, up to the latest such session's end. Returns the rows deleted, those put back not
    subtracted.
    """
    result = await connection.execute(
        text(
            "WITH gone AS (DELETE FROM event_session_urls WHERE project_id = :project_id AND first_seen < :cutoff"
            " RETURNING session_id, distinct_id, url_hash),"
            " straddling AS (SELECT session_id, ended_at FROM query_sessions WHERE project_id = :project_id"
            f" AND started_at < :cutoff AND {ended_at_or_after(':cutoff')}"
            " AND session_id IN (SELECT session_id FROM gone)),"
            " kept AS (SELECT e.project_id, e.session_id, e.distinct_id, md5(e.url)::uuid AS url_hash,"
            " min(e.url) AS url, min(e.path) AS path, min(e.occurred_at) AS first_seen"
            " FROM events e WHERE e.project_id = :project_id AND e.occurred_at >= :cutoff"
            " AND e.occurred_at <= (SELECT max(ended_at) FROM straddling)"
            " AND e.session_id IN (SELECT session_id FROM straddling)"
            " GROUP BY e.project_id, e.session_id, e.distinct_id, md5(e.url)::uuid),"
            " restored AS (INSERT INTO event_session_urls"
            " (project_id, session_id, distinct_id, url_hash, url, path, first_seen)"
            " SELECT kept.* FROM kept JOIN gone USING (session_id, distinct_id, url_hash)"
            " ON CONFLICT DO NOTHING RETURNING 1)"
            " SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM restored)"
        ),
        {"project_id": project_id, "cutoff": cutoff},
    )
    return int(result.scalar_one())


async def delete_sessions_before(connection: AsyncConnection, project_id: int, cutoff: datetime) -> int:
    """Query sessions that ended before the cutoff; run it before deleting the events.

    Dropping a partition fires no trigger, and deleting events recomputes each touched session
    from the events left (services/query: migration 0600), needless for a session wholly expired.
    A session that straddles the cutoff is recomputed from its events kept (``recompute_straddling_sessions``).
    """
    result = await connection.execute(
        text(f"DELETE FROM query_sessions WHERE project_id = :project_id AND {ended_at_before(':cutoff')}"),
        {"project_id": project_id, "cutoff": cutoff},
    )
    return int(result.rowcount)


# One session row from its events, as migration 0600's triggers compute it.
_SESSION_FROM_EVENTS = """
    SELECT a.project_id, a.session_id, a.distinct_id, f.occurred_at, f.event_uuid, a.ended_at, a.pageviews, a.events,
           en.path, en.occurred_at, en.event_uuid, ex.path, ex.occurred_at, ex.event_uuid,
           f.referrer_domain, f.utm_source, f.utm_medium, f.utm_campaign, f.country, f.browser, f.os, f.device_type
    FROM (SELECT project_id, session_id, min(distinct_id) AS distinct_id, max(occurred_at) AS ended_at,
                 count(*) FILTER (WHERE name = 'pageview') AS pageviews, count(*) AS events
          FROM kept GROUP BY project_id, session_id) a
    JOIN (SELECT DISTINCT ON (session_id) * FROM kept ORDER BY session_id, occurred_at, event_uuid) f
        USING (project_id, session_id)
    LEFT JOIN (SELECT DISTINCT ON (session_id) * FROM kept WHERE name = 'pageview'
               ORDER BY session_id, occurred_at, event_uuid) en USING (project_id, session_id)
    LEFT JOIN (SELECT DISTINCT ON (session_id) * FROM kept WHERE name = 'pageview'
               ORDER BY session_id, occurred_at DESC, event_uuid DESC) ex USING (project_id, session_id)
"""


async def recompute_straddling_sessions(connection: AsyncConnection, project_id: int, cutoff: datetime) -> int:
    """Sessions begun before the cutoff and ended after it, again from their events kept.

    Their first events may have gone with a dropped partition (no trigger fires then); the
    expired events' attributes (a first page, a referrer) must not outlive them.
    """
    result = await connection.execute(
        text(
            "WITH gone AS (DELETE FROM query_sessions WHERE project_id = :project_id AND started_at < :cutoff"
            " RETURNING project_id, session_id, ended_at),"
            " kept AS (SELECT e.* FROM events e JOIN gone g USING (project_id, session_id)"
            " WHERE e.project_id = :project_id AND e.occurred_at >= :cutoff"
            " AND e.occurred_at <= (SELECT max(ended_at) FROM gone) AND NOT e.is_bot)"
            " INSERT INTO query_sessions (project_id, session_id, distinct_id, started_at, first_uuid, ended_at,"
            " pageviews, events, entry_page, entry_at, entry_uuid, exit_page, exit_at, exit_uuid, referrer,"
            f" utm_source, utm_medium, utm_campaign, country, browser, os, device) {_SESSION_FROM_EVENTS}"
        ),
        {"project_id": project_id, "cutoff": cutoff},
    )
    return int(result.rowcount)


async def delete_events_before(connection: AsyncConnection, project_id: int, cutoff: datetime) -> int:
    # occurred_at is the partition key: Postgres visits only the partitions before the
    # cutoff (and events_default).
    result = await connection.execute(delete(Event).where(Event.project_id == project_id, Event.occurred_at < cutoff))
    return result.rowcount


async def delete_recordings_ended_before(
    connection: AsyncConnection, project_id: int, cutoff: datetime
) -> tuple[int, int]:
    """Deletes recordings whose last event is before the cutoff; returns (sessions, chunks)."""
    expired = select(ReplaySession.session_id).where(
        ReplaySession.project_id == project_id, ReplaySession.ended_at < cutoff
    )
    chunks = await connection.execute(
        delete(ReplayChunk).where(ReplayChunk.project_id == project_id, ReplayChunk.session_id.in_(expired))
    )
    sessions = await connection.execute(
        delete(ReplaySession).where(ReplaySession.project_id == project_id, ReplaySession.ended_at < cutoff)
    )
    return sessions.rowcount, chunks.rowcount


async def prune_ingested_events(connection: AsyncConnection, project_id: int, received_before: datetime) -> int:
    result = await connection.execute(
        delete(IngestedEvent).where(IngestedEvent.project_id == project_id, IngestedEvent.received_at < received_before)
    )
    return result.rowcount
