"""`sightline retention apply`: removes what each project's retention no longer allows.

- Events: a daily partition is dropped whole once every project's retention has passed
  for that day (dropping a table costs nothing, unlike deleting millions of rows and
  vacuuming after them); rows older than a project's own, shorter retention are deleted.
- Recordings: sessions whose last event is older than the project's retention, with
  their chunks.
- Idempotency keys (``ingested_events``) older than the retry window, or than the
  project's retention if that is shorter.
- Query rollups (per-day cubes, HyperLogLog sketches of visitors, weekly unions, day
  markers) of every expired day: a dropped partition fires no delete trigger, and the
  rollups would otherwise keep serving paths, referrers and visitors of expired days. The
  day the cutoff falls in is rebuilt from the events it keeps (read raw until then).

Each step commits on its own, so a partition that cannot be locked right now (it is
skipped and retried on the next run) does not undo the rest. Meant to run daily (cron,
systemd timer); running it twice does no harm.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import project_repository, retention_repository, rollup_purge_repository
from services.common.db import create_admin_engine
from services.common.settings import AdminDatabaseSettings

logger = logging.getLogger(__name__)

# Trackers retry a failed batch for minutes, at most hours; a week of idempotency keys
# covers a device that comes back online days later, and the table stays small.
IDEMPOTENCY_KEEP_DAYS = 7
DROP_LOCK_TIMEOUT_MS = 5_000


@dataclass
class RetentionReport:
    dropped_partitions: list[str] = field(default_factory=list)
    skipped_partitions: list[str] = field(default_factory=list)
    deleted_events: int = 0
    deleted_query_sessions: int = 0
    deleted_session_urls: int = 0
    deleted_sessions: int = 0
    deleted_chunks: int = 0
    pruned_idempotency_keys: int = 0
    projects: int = 0
    rollups: rollup_purge_repository.RollupPurgeCounts = field(
        default_factory=rollup_purge_repository.RollupPurgeCounts
    )
    # With --project: rollups of the other projects' days that went with dropped partitions.
    other_projects_rollups: rollup_purge_repository.RollupPurgeCounts = field(
        default_factory=rollup_purge_repository.RollupPurgeCounts
    )

    def as_json(self) -> dict[str, object]:
        return {
            "deletedRows": {
                "events": self.deleted_events,
                "query_sessions": self.deleted_query_sessions,
                "event_session_urls": self.deleted_session_urls,
                "replay_sessions": self.deleted_sessions,
                "replay_chunks": self.deleted_chunks,
                "ingested_events": self.pruned_idempotency_keys,
                **self.rollups.by_table(),
            },
            "rollupDaysToRebuild": self.rollups.days_to_rebuild,
            "otherProjectsDeletedRows": self.other_projects_rollups.by_table(),
            "droppedPartitions": self.dropped_partitions,
            "skippedPartitions": self.skipped_partitions,
            "deletedEvents": self.deleted_events,
            "deletedSessions": self.deleted_sessions,
            "deletedChunks": self.deleted_chunks,
            "prunedIdempotencyKeys": self.pruned_idempotency_keys,
            "projects": self.projects,
        }


async def apply_retention(
    settings: AdminDatabaseSettings,
    now: datetime,
    *,
    project_ids: Collection[int] | None = None,
    idempotency_keep_days: int = IDEMPOTENCY_KEEP_DAYS,
) -> RetentionReport:
    """Applies every project's retention as of ``now``.

    ``project_ids`` limits row deletion to those projects. Whole partitions are still
    dropped, but only those past every project's retention, which no project may keep.
    """
    report = RetentionReport()
    engine = create_admin_engine(settings)
    try:
        async with engine.connect() as connection:
            retentions = await retention_repository.project_retentions(connection)
        if not retentions:
            return report

        longest = max(retention.retention_days for retention in retentions)
        async with engine.connect() as connection:
            droppable = await retention_repository.daily_partitions_ending_by(connection, now - timedelta(days=longest))
        for name in droppable:
            try:
                async with engine.begin() as connection:
                    await retention_repository.drop_event_partition(connection, name, DROP_LOCK_TIMEOUT_MS)
            except DBAPIError as exc:
                if not is_lock_timeout(exc):
                    raise
                logger.warning("partition %s is busy; it will be dropped on a later run", name)
                report.skipped_partitions.append(name)
            else:
                report.dropped_partitions.append(name)

        every_projects_cutoff = now - timedelta(days=longest)
        for retention in retentions:
            if project_ids is not None and retention.project_id not in project_ids:
                # Only what the dropped partitions held: their sessions and their days' rollups.
                async with engine.begin() as connection:
                    report.deleted_session_urls += await retention_repository.delete_session_urls_before(
                        connection, retention.project_id, every_projects_cutoff
                    )
                    report.deleted_query_sessions += await retention_repository.delete_sessions_before(
                        connection, retention.project_id, every_projects_cutoff
                    )
                    await retention_repository.recompute_straddling_sessions(
                        connection, retention.project_id, every_projects_cutoff
                    )
                report.other_projects_rollups.add(
                    await _purge_rollups(engine, retention.project_id, retention.timezone, every_projects_cutoff)
                )
                continue
            report.projects += 1
            cutoff = now - timedelta(days=retention.retention_days)
            async with engine.begin() as connection:
                report.deleted_session_urls += await retention_repository.delete_session_urls_before(
                    connection, retention.project_id, cutoff
                )
                report.deleted_query_sessions += await retention_repository.delete_sessions_before(
                    connection, retention.project_id, cutoff
                )
                report.deleted_events += await retention_repository.delete_events_before(
                    connection, retention.project_id, cutoff
                )
                await retention_repository.recompute_straddling_sessions(connection, retention.project_id, cutoff)
            async with engine.begin() as connection:
                sessions, chunks = await retention_repository.delete_recordings_ended_before(
                    connection, retention.project_id, cutoff
                )
                report.deleted_sessions += sessions
                report.deleted_chunks += chunks
            # A key is only a uuid, but one outliving its event outlives the retention promise.
            keys_before = max(now - timedelta(days=idempotency_keep_days), cutoff)
            async with engine.begin() as connection:
                report.pruned_idempotency_keys += await retention_repository.prune_ingested_events(
                    connection, retention.project_id, keys_before
                )
            # After the events: deleting them marks their days changed, which this then clears.
            report.rollups.add(await _purge_rollups(engine, retention.project_id, retention.timezone, cutoff))
    finally:
        await engine.dispose()
    return report


async def _purge_rollups(
    engine: AsyncEngine, project_id: int, timezone: str, cutoff: datetime
) -> rollup_purge_repository.RollupPurgeCounts:
    """Rollups of the project's local days before the cutoff go; the day holding it is rebuilt."""
    first_kept_day = cutoff.astimezone(ZoneInfo(timezone)).date()
    async with engine.begin() as connection:
        days = await rollup_purge_repository.rollup_days_through(connection, project_id, first_kept_day)
        # Waits for a rebuild in flight, which could otherwise write an expired day's rows back.
        await rollup_purge_repository.lock_days(connection, project_id, days)
        return await rollup_purge_repository.purge_before(connection, project_id, first_kept_day)


def is_lock_timeout(exc: DBAPIError) -> bool:
    # SQLAlchemy wraps its adapter's exception, which wraps asyncpg's.
    driver_error = exc.orig.__cause__ if exc.orig is not None and exc.orig.__cause__ is not None else exc.orig
    return isinstance(driver_error, asyncpg.LockNotAvailableError)


async def set_project_retention(settings: AdminDatabaseSettings, project_id: int, retention_days: int) -> bool:
    """Sets a project's retention in days; False if there is no such project."""
    engine = create_admin_engine(settings)
    try:
        async with engine.begin() as connection:
            project = await project_repository.set_retention_days(connection, project_id, retention_days)
    finally:
        await engine.dispose()
    return project is not None
