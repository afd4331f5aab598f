"""All SQL that removes query rollups derived from data that is gone. Callers own the transaction.

Rollup rows (per-day cubes with HyperLogLog sketches of visitors, their weekly unions) are
derived from events; when events go (erasure, retention), so must every row computed from
them. A day whose events partly remain is marked never built (``built_changes`` NULL): the
query service reads such a day from raw events, and the refresher rebuilds it, first among
equals, as it rebuilds any changed day. A day with no events left loses its marker too.

Builders (services/query/rollup_repository.py) take a transaction-scoped advisory lock per
day and per week before they write; ``lock_days`` takes the same locks, waiting for a build
in flight to commit, so a build that read the events before they were deleted cannot write
its rows back afterwards.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, timedelta

from sqlalchemy import BigInteger, Date, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

# Any constant works; it only has to be the same for every process that builds rollups.
ROLLUP_LOCK_NAMESPACE = 7_345_100


def day_lock_key(project_id: int, day: date) -> str:
    return f"{project_id}:{day.isoformat()}"


def week_lock_key(project_id: int, week: date) -> str:
    return f"{project_id}:week:{week.isoformat()}"


def week_of(day: date) -> date:
    """The Monday of the day's week (Postgres's date_trunc('week', ...))."""
    return day - timedelta(days=day.weekday())


# Per-day rollup tables beside visits and pages (migrations 0650, 0660), purged the same way.
SESSION_CUBE_TABLES = (
    "query_rollup_entry_pages",
    "query_rollup_exit_pages",
    "query_rollup_hours",
    "query_rollup_domains",
    "query_rollup_event_names",
    "query_rollup_event_pages",
    "query_rollup_entry_event_pages",
)
# Every table of rows derived from a project's days, and of the weeks made from those days.
DAY_ROLLUP_TABLES = ("query_rollup_visits", "query_rollup_pages", *SESSION_CUBE_TABLES)
# What the incremental refresher keeps per day (migration 0730): each session as folded into
# its start day's rows (by that `day`), and per day, session and visitor (a distinct_id) the
# counts folded. Both go with their days; the refresher rebuilds them with the day.
# The exit-page items (migration 0900) and the goal pairs with their day markers (1000) are made
# from the session days and go with them.
INCREMENT_TABLES = (
    "query_rollup_sessions_folded",
    "query_rollup_session_days",
    "query_rollup_exit_items",
    "query_rollup_goal_pairs",
    "query_rollup_goal_pair_days",
)
WEEK_ROLLUP_TABLES = ("query_rollup_page_weeks", "query_rollup_weeks")
# Retention cohorts (migration 0720): counts per (active_day, first_day), and each week's stamp.
# A week's rows depend on every session up to its Sunday (first-seen days), so a purge of some
# days drops their rows and the stamps of their weeks and of every later week: those are rebuilt.
RETENTION_ROLLUP_TABLES = ("query_rollup_retention", "query_rollup_retention_weeks")


@dataclass
class RollupPurgeCounts:
    visit_rows: int = 0
    page_rows: int = 0
    session_cube_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SESSION_CUBE_TABLES, 0))
    page_week_rows: int = 0
    weeks: int = 0
    retention_rows: int = 0
    retention_weeks: int = 0
    increment_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INCREMENT_TABLES, 0))
    days_forgotten: int = 0
    days_to_rebuild: int = 0

    def add(self, other: RollupPurgeCounts) -> None:
        self.visit_rows += other.visit_rows
        self.page_rows += other.page_rows
        for table, rows in other.session_cube_rows.items():
            self.session_cube_rows[table] += rows
        self.page_week_rows += other.page_week_rows
        self.weeks += other.weeks
        self.retention_rows += other.retention_rows
        self.retention_weeks += other.retention_weeks
        for table, rows in other.increment_rows.items():
            self.increment_rows[table] += rows
        self.days_forgotten += other.days_forgotten
        self.days_to_rebuild += other.days_to_rebuild

    def by_table(self) -> dict[str, int]:
        return {
            "query_rollup_visits": self.visit_rows,
            "query_rollup_pages": self.page_rows,
            **self.session_cube_rows,
            "query_rollup_page_weeks": self.page_week_rows,
            "query_rollup_weeks": self.weeks,
            "query_rollup_retention": self.retention_rows,
            "query_rollup_retention_weeks": self.retention_weeks,
            **self.increment_rows,
            "query_rollup_days": self.days_forgotten,
        }


async def lock_days(connection: AsyncConnection, project_id: int, days: Collection[date]) -> None:
    """Waits for, then holds until commit, the builders' locks of these days and their weeks.

    Keys are taken in one sorted order, so two callers never deadlock on each other; builders
    only ever try a lock, never wait for one.
    """
    keys = sorted(
        {day_lock_key(project_id, day) for day in days} | {week_lock_key(project_id, week_of(day)) for day in days}
    )
    if not keys:
        return
    await connection.execute(
        text(
            "SELECT count(pg_advisory_xact_lock(:namespace, hashtext(key)))"
            " FROM (SELECT key FROM unnest(CAST(:keys AS text[])) AS key ORDER BY key) AS ordered"
        ),
        {"namespace": ROLLUP_LOCK_NAMESPACE, "keys": keys},
    )


_DAYS = bindparam("days", type_=ARRAY(Date))
_PROJECT = bindparam("project_id", type_=BigInteger)


async def purge_days(connection: AsyncConnection, project_id: int, days: Collection[date]) -> RollupPurgeCounts:
    """Removes the rollup rows of these days and of their weeks; the days must be rebuilt.

    Take ``lock_days`` first. A day still holding events is rebuilt by the refresher; until
    then queries read it from raw events. A day without events left loses its marker.
    """
    counts = RollupPurgeCounts()
    if not days:
        return counts
    day_list = sorted(set(days))
    week_list = sorted({week_of(day) for day in day_list})
    params = {"project_id": project_id, "days": day_list, "weeks": week_list, "week": week_list[0]}
    await _delete_rollup_rows(connection, counts, params, "day = ANY(:days)", "week = ANY(:weeks)")
    await _delete_retention_rows(connection, counts, params, "active_day = ANY(:days)", "week >= :week")
    # Days left without any event need no marker (a day without one has never had an event).
    # The timezone is the project's: the same local day the delete trigger counted.
    counts.days_forgotten = await _rowcount(
        connection,
        "DELETE FROM query_rollup_days d USING projects p"
        " WHERE d.project_id = :project_id AND d.day = ANY(:days) AND p.project_id = d.project_id"
        " AND NOT EXISTS (SELECT FROM events e WHERE e.project_id = d.project_id"
        " AND e.occurred_at >= (d.day::timestamp AT TIME ZONE p.timezone)"
        " AND e.occurred_at < ((d.day + 1)::timestamp AT TIME ZONE p.timezone))",
        params,
    )
    counts.days_to_rebuild = await _mark_to_rebuild(connection, "day = ANY(:days)", params)
    return counts


async def purge_before(connection: AsyncConnection, project_id: int, first_kept_day: date) -> RollupPurgeCounts:
    """Retention: removes every rollup row of the days before ``first_kept_day``, and their markers.

    ``first_kept_day`` may itself have lost its earliest events (the cutoff falls inside it): its
    rows and its week's rows go too and it is rebuilt from the events it keeps. Every week that
    holds an expired day loses its weekly rows; the refresher unions it again from the days kept.
    """
    params = {"project_id": project_id, "day": first_kept_day, "week": week_of(first_kept_day)}
    counts = RollupPurgeCounts()
    await _delete_rollup_rows(connection, counts, params, "day <= :day", "week <= :week")
    # Visitors first seen before the cutoff are first seen later once their sessions are gone:
    # every week's rows may change, so every stamp goes.
    await _delete_retention_rows(connection, counts, params, "(active_day <= :day OR first_day <= :day)", "true")
    counts.days_forgotten = await _rowcount(
        connection, "DELETE FROM query_rollup_days WHERE project_id = :project_id AND day < :day", params
    )
    counts.days_to_rebuild = await _mark_to_rebuild(connection, "day = :day", params)
    return counts


async def _delete_rollup_rows(
    connection: AsyncConnection, counts: RollupPurgeCounts, params: dict[str, object], days: str, weeks: str
) -> None:
    """The project's rows of the daily and weekly rollup tables whose day matches ``days`` or
    whose week matches ``weeks`` (conditions written here, never from input)."""
    where = "WHERE project_id = :project_id AND"
    counts.visit_rows = await _rowcount(connection, f"DELETE FROM query_rollup_visits {where} {days}", params)
    counts.page_rows = await _rowcount(connection, f"DELETE FROM query_rollup_pages {where} {days}", params)
    for table in SESSION_CUBE_TABLES:
        # The names are the constants above, never input.
        counts.session_cube_rows[table] = await _rowcount(connection, f"DELETE FROM {table} {where} {days}", params)
    counts.page_week_rows = await _rowcount(connection, f"DELETE FROM query_rollup_page_weeks {where} {weeks}", params)
    counts.weeks = await _rowcount(connection, f"DELETE FROM query_rollup_weeks {where} {weeks}", params)
    for table in INCREMENT_TABLES:
        counts.increment_rows[table] = await _rowcount(connection, f"DELETE FROM {table} {where} {days}", params)


async def _delete_retention_rows(
    connection: AsyncConnection, counts: RollupPurgeCounts, params: dict[str, object], rows: str, weeks: str
) -> None:
    """The project's retention rows matching ``rows`` and week stamps matching ``weeks``
    (conditions written here, never from input); the weeks are rebuilt from the sessions left."""
    where = "WHERE project_id = :project_id AND"
    counts.retention_rows = await _rowcount(connection, f"DELETE FROM query_rollup_retention {where} {rows}", params)
    counts.retention_weeks = await _rowcount(
        connection, f"DELETE FROM query_rollup_retention_weeks {where} {weeks}", params
    )


async def _mark_to_rebuild(connection: AsyncConnection, days: str, params: dict[str, object]) -> int:
    return await _rowcount(
        connection,
        "UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL, changes = changes + 1, changed_at = now()"
        f" WHERE project_id = :project_id AND {days}",
        params,
    )


async def _rowcount(connection: AsyncConnection, sql: str, params: dict[str, object]) -> int:
    statement = text(sql)
    if ":days" in sql:
        statement = statement.bindparams(_DAYS)
    if ":week " in sql or sql.endswith(":week"):
        statement = statement.bindparams(bindparam("week", type_=Date))
    if ":weeks" in sql:
        statement = statement.bindparams(bindparam("weeks", type_=ARRAY(Date)))
    if ":project_id" in sql:
        statement = statement.bindparams(_PROJECT)
    result = await connection.execute(statement, params)
    return int(result.rowcount)


async def rollup_days_through(connection: AsyncConnection, project_id: int, last_day: date) -> list[date]:
    """The days up to last_day that have a rollup marker (so a builder may be working on them)."""
    result = await connection.execute(
        text("SELECT day FROM query_rollup_days WHERE project_id = :project_id AND day <= :day ORDER BY day"),
        {"project_id": project_id, "day": last_day},
    )
    return list(result.scalars())


async def forget_every_day(connection: AsyncConnection, project_id: int) -> RollupPurgeCounts:
    """A timezone change: every rollup row of the project goes, and its days are marked afresh.

    Local days are the project timezone's, so no built day means anything in another zone. The
    markers are remade from the events' days in the project's (new) timezone, never built: the
    query service reads those days from raw events until the refresher rebuilds them. Take
    ``lock_days`` for the old markers first, so a build in flight cannot write an old day back.
    """
    params: dict[str, object] = {"project_id": project_id}
    counts = RollupPurgeCounts()
    counts.visit_rows = await _rowcount(
        connection, "DELETE FROM query_rollup_visits WHERE project_id = :project_id", params
    )
    counts.page_rows = await _rowcount(
        connection, "DELETE FROM query_rollup_pages WHERE project_id = :project_id", params
    )
    for table in SESSION_CUBE_TABLES:
        counts.session_cube_rows[table] = await _rowcount(
            connection, f"DELETE FROM {table} WHERE project_id = :project_id", params
        )
    counts.page_week_rows = await _rowcount(
        connection, "DELETE FROM query_rollup_page_weeks WHERE project_id = :project_id", params
    )
    counts.weeks = await _rowcount(connection, "DELETE FROM query_rollup_weeks WHERE project_id = :project_id", params)
    counts.retention_rows = await _rowcount(
        connection, "DELETE FROM query_rollup_retention WHERE project_id = :project_id", params
    )
    counts.retention_weeks = await _rowcount(
        connection, "DELETE FROM query_rollup_retention_weeks WHERE project_id = :project_id", params
    )
    for table in INCREMENT_TABLES:
        counts.increment_rows[table] = await _rowcount(
            connection, f"DELETE FROM {table} WHERE project_id = :project_id", params
        )
    counts.days_forgotten = await _rowcount(
        connection, "DELETE FROM query_rollup_days WHERE project_id = :project_id", params
    )
    counts.days_to_rebuild = await _rowcount(
        connection,
        "INSERT INTO query_rollup_days (project_id, day)"
        " SELECT DISTINCT e.project_id, (e.occurred_at AT TIME ZONE p.timezone)::date"
        " FROM events e JOIN projects p ON p.project_id = e.project_id WHERE e.project_id = :project_id",
        params,
    )
    return counts
