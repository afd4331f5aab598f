"""All SQL that builds the query rollups and tells which days are current. Callers own the transaction.

A day's rollup rows are computed from that day's raw events and the sessions that started on
it (`query_sessions`) with the same SQL the query path uses for days without rollups
(services/query/repository.py), so both give the same figures. A session's figures live on
its start day: an event extending yesterday's session marks yesterday changed too (the
triggers of migrations 0640 and 0680), so its row is rebuilt with the session's new duration and exit.

Freshness: a trigger on events bumps `query_rollup_days.changes` for every statement that
inserts or deletes events of a (project, local day), holding that row's lock until the
inserting transaction commits. A rebuild first locks the row and reads `changes` in a short
transaction of its own (`claim_day`), which waits for in-flight batches; then it reads the
events with a later snapshot and records that generation as built. A batch that commits after
the claim bumps `changes` past it, so the day shows as changed again and is rebuilt.

Weeks: once every day of a complete week (Monday to Sunday, before today) is current, the
week's page rows are unioned from the days' rows into `query_rollup_page_weeks`, and
`query_rollup_weeks.days_built_at` records the latest build among those days. A day rebuilt
afterwards has a later `built_at`, so the week stops being usable (its days are read instead)
until it is rebuilt in turn.

Erasure and retention remove rows derived from deleted events through
services/common/rollup_purge_repository.py, which takes the same per-day and per-week locks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.rollup_purge_repository import ROLLUP_LOCK_NAMESPACE, day_lock_key, week_lock_key
from services.query.repository import CUBE_METRIC_COLUMNS, cube_select_sql, session_ctes
from services.query.vocabulary import CUBES, PAGES_CUBE

# A day row of query_rollup_days (alias d) that queries may read: current, or current less than
# :max_staleness_s ago.
_USABLE_DAY = (
    "d.built_changes IS NOT NULL"
    " AND (d.built_changes = d.changes OR d.built_at > now() - make_interval(secs => :max_staleness_s))"
)


@dataclass(frozen=True)
class DayToBuild:
    project_id: int
    timezone: str
    day: date


@dataclass(frozen=True)
class WeekToBuild:
    project_id: int
    week: date  # the Monday


async def day_states(
    connection: AsyncConnection, project_id: int, date_from: date, date_to: date, max_staleness_s: float
) -> dict[date, bool]:
    """The days of the range that hold events (they have a marker), each with whether its rollup
    is usable: current, or current less than max_staleness_s ago. A day without a marker has
    never had an event (or lost its last one), so nothing needs computing for it."""
    result = await connection.execute(
        text(
            f"SELECT d.day, coalesce({_USABLE_DAY}, false) FROM query_rollup_days d"
            " WHERE d.project_id = :project_id AND d.day BETWEEN :date_from AND :date_to"
        ),
        {"project_id": project_id, "date_from": date_from, "date_to": date_to, "max_staleness_s": max_staleness_s},
    )
    return {row[0]: bool(row[1]) for row in result}


async def usable_weeks(
    connection: AsyncConnection, project_id: int, date_from: date, date_to: date, max_staleness_s: float
) -> set[date]:
    """Mondays of the weeks inside [date_from, date_to] whose weekly rows equal their days' rows.

    Every day of such a week that has events is usable, and none was rebuilt after the week.
    A day without a query_rollup_days row has never had an event. The subqueries name the
    project by the parameter, not by w.project_id: Citus routes a statement to one shard only
    when each distributed table in it is filtered on the constant (with the correlation, it ran
    the statement on every shard).
    """
    result = await connection.execute(
        text(
            "SELECT w.week FROM query_rollup_weeks w"
            " WHERE w.project_id = :project_id AND w.week >= :date_from AND w.week + 6 <= :date_to"
            " AND w.days_built_at = (SELECT max(d.built_at) FROM query_rollup_days d"
            " WHERE d.project_id = :project_id AND d.day BETWEEN w.week AND w.week + 6)"
            " AND NOT EXISTS (SELECT FROM query_rollup_days d"
            " WHERE d.project_id = :project_id AND d.day BETWEEN w.week AND w.week + 6"
            f" AND NOT ({_USABLE_DAY}))"
        ),
        {"project_id": project_id, "date_from": date_from, "date_to": date_to, "max_staleness_s": max_staleness_s},
    )
    return set(result.scalars())


async def days_to_build(connection: AsyncConnection, limit: int, project_id: int | None = None) -> list[DayToBuild]:
    """Changed or never-built days, newest first (today's figures matter most)."""
    result = await connection.execute(
        text(
            "SELECT d.project_id, p.timezone, d.day FROM query_rollup_days d"
            " JOIN projects p ON p.project_id = d.project_id"
            " WHERE d.built_changes IS DISTINCT FROM d.changes"
            " AND (CAST(:project_id AS bigint) IS NULL OR d.project_id = :project_id)"
            " ORDER BY d.day DESC, d.project_id LIMIT :limit"
        ),
        {"limit": limit, "project_id": project_id},
    )
    return [DayToBuild(row.project_id, row.timezone, row.day) for row in result]


async def count_days_to_build(connection: AsyncConnection, project_id: int | None = None) -> int:
    result = await connection.execute(
        text(
            "SELECT count(*) FROM query_rollup_days WHERE built_changes IS DISTINCT FROM changes"
            " AND (CAST(:project_id AS bigint) IS NULL OR project_id = :project_id)"
        ),
        {"project_id": project_id},
    )
    return int(result.scalar_one())


async def claim_day(connection: AsyncConnection, project_id: int, day: date) -> int | None:
    """The day's change generation, read under its row lock: waits for batches in flight.

    Run it in a transaction of its own and commit before `rebuild_day`.
    """
    result = await connection.execute(
        text("SELECT changes FROM query_rollup_days WHERE project_id = :project_id AND day = :day FOR UPDATE"),
        {"project_id": project_id, "day": day},
    )
    return result.scalar_one_or_none()


async def rebuild_day(
    connection: AsyncConnection,
    *,
    project_id: int,
    timezone: str,
    day: date,
    start: datetime,
    end: datetime,
    generation: int,
) -> bool:
    """Replace the day's cube rows; False if another process is rebuilding that day right now."""
    locked = await connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:namespace, hashtext(:key))"),
        {"namespace": ROLLUP_LOCK_NAMESPACE, "key": day_lock_key(project_id, day)},
    )
    if not locked.scalar_one():
        return False
    params = {"project_id": project_id, "timezone": timezone, "day": day, "start": start, "end": end}
    for cube in CUBES:
        await connection.execute(
            text(f"DELETE FROM {cube.table} WHERE project_id = :project_id AND day = :day"), params
        )
    # One statement for every table, so the day's events are read and joined to sessions once.
    inserts = []
    for cube in CUBES:
        columns = ", ".join(("day", "grain", *cube.columns))
        computed = cube_select_sql(cube, cube.grains)
        inserts.append(
            f"INSERT INTO {cube.table} (project_id, {columns}, {CUBE_METRIC_COLUMNS})"
            f" SELECT :project_id, {columns}, {CUBE_METRIC_COLUMNS} FROM ({computed}) computed"
        )
    writes = ", ".join(f"c{index} AS ({insert})" for index, insert in enumerate(inserts[:-1]))
    await connection.execute(text(f"WITH {session_ctes(materialized=True)}, {writes} {inserts[-1]}"), params)
    await connection.execute(
        text(
            "UPDATE query_rollup_days SET built_changes = :generation, built_at = now()"
            " WHERE project_id = :project_id AND day = :day"
        ),
        {"project_id": project_id, "day": day, "generation": generation},
    )
    return True


async def weeks_to_build(connection: AsyncConnection, limit: int, project_id: int | None = None) -> list[WeekToBuild]:
    """Complete weeks (ended before the project's today) whose days are all current and were
    built after the week's rows were, newest first."""
    result = await connection.execute(
        text(
            "SELECT d.project_id, d.week FROM"
            " (SELECT project_id, date_trunc('week', day)::date AS week, built_changes, changes, built_at"
            " FROM query_rollup_days) d"
            " JOIN projects p ON p.project_id = d.project_id"
            " LEFT JOIN query_rollup_weeks w ON w.project_id = d.project_id AND w.week = d.week"
            " WHERE (CAST(:project_id AS bigint) IS NULL OR d.project_id = :project_id)"
            " AND d.week + 7 <= (now() AT TIME ZONE p.timezone)::date"
            " GROUP BY d.project_id, d.week, w.days_built_at"
            " HAVING bool_and(d.built_changes IS NOT NULL AND d.built_changes = d.changes)"
            " AND w.days_built_at IS DISTINCT FROM max(d.built_at)"
            " ORDER BY d.week DESC, d.project_id LIMIT :limit"
        ),
        {"limit": limit, "project_id": project_id},
    )
    return [WeekToBuild(row.project_id, row.week) for row in result]


async def rebuild_week(connection: AsyncConnection, *, project_id: int, week: date) -> bool:
    """Replace the week's page rows with the union of its days' rows; False if another process
    is rebuilding that week right now."""
    locked = await connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:namespace, hashtext(:key))"),
        {"namespace": ROLLUP_LOCK_NAMESPACE, "key": week_lock_key(project_id, week)},
    )
    if not locked.scalar_one():
        return False
    # Sorted aggregation: a sketch union's state is ~130 kB per group (see repository.aggregate).
    await connection.execute(text("SELECT set_config('enable_hashagg', 'off', true)"))
    table, weekly_table = PAGES_CUBE.table, PAGES_CUBE.weekly_table
    params = {"project_id": project_id, "week": week}
    await connection.execute(
        text(f"DELETE FROM {weekly_table} WHERE project_id = :project_id AND week = :week"), params
    )
    columns = ", ".join(("grain", *PAGES_CUBE.columns))
    # One statement, so the stamp and the rows come from the same snapshot of the days.
    await connection.execute(
        text(
            "WITH stamp AS (INSERT INTO query_rollup_weeks AS w (project_id, week, days_built_at)"
            " SELECT :project_id, :week, max(built_at) FROM query_rollup_days"
            " WHERE project_id = :project_id AND day BETWEEN :week AND CAST(:week AS date) + 6"
            " ON CONFLICT (project_id, week) DO UPDATE SET days_built_at = excluded.days_built_at)"
            f" INSERT INTO {weekly_table} (project_id, week, {columns}, {CUBE_METRIC_COLUMNS})"
            f" SELECT :project_id, :week, {columns}, hll_union_agg(visitors), sum(sessions), sum(bounces),"
            " sum(duration_s), sum(pageviews), sum(events), sum(session_pageviews)"
            f" FROM {table} WHERE project_id = :project_id AND day BETWEEN :week AND CAST(:week AS date) + 6"
            f" GROUP BY {columns}"
        ),
        params,
    )
    return True


# Retention cohorts (migration 0720). A week's rows count, per (active_day, first_day), the
# visitors whose first session of the week began on active_day and whose first session ever began
# on first_day. They depend on every session begun up to the week's Sunday (first-seen days go
# back to the first ever), so a week is stamped with the latest build among the project's days
# up to its Sunday: a day rebuilt since (events arrived, or were erased) makes the week and
# every later one stale until rebuilt. query_sessions is kept at ingest, so a rebuild reads
# sessions at least as fresh as the days' builds; `retention_week_states` says whether the rows
# are exactly current (stamp equal, every day current).


# The Monday of a date column or parameter (date_trunc on a date goes through the session's zone).
def _monday(expression: str) -> str:
    return f"({expression} - (extract(isodow FROM {expression})::int - 1))"


@dataclass(frozen=True)
class RetentionWeekState:
    week: date  # the Monday
    days_built_at: datetime | None  # latest build among the project's days up to its Sunday
    days_current: bool  # every one of those days current
    days_built: bool  # every one of those days built at least once since it was last purged
    stamp: datetime | None  # the days_built_at the week's rows were built from; None: never built
    fresh: bool  # the rows were built less than max_staleness_s ago


async def retention_week_states(
    connection: AsyncConnection, project_id: int, first_week: date, last_week: date, max_staleness_s: float
) -> list[RetentionWeekState]:
    """Each week in [first_week, last_week] that holds a day with events, with what decides
    whether its retention rows may be read. Two statements on one project each (Citus routes
    both to one shard)."""
    params = {
        "project_id": project_id,
        "first_week": first_week,
        "last_week": last_week,
        "max_staleness_s": max_staleness_s,
    }
    days = await connection.execute(
        text(
            f"SELECT week, days_built_at, days_current, days_built FROM (SELECT week,"
            " max(built_at) OVER (ORDER BY week) AS days_built_at,"
            " bool_and(current) OVER (ORDER BY week) AS days_current,"
            " bool_and(built) OVER (ORDER BY week) AS days_built"
            f" FROM (SELECT {_monday('day')} AS week, max(built_at) AS built_at,"
            " bool_and(built_changes IS NOT NULL AND built_changes = changes) AS current,"
            " bool_and(built_changes IS NOT NULL) AS built"
            " FROM query_rollup_days WHERE project_id = :project_id AND day <= CAST(:last_week AS date) + 6"
            " GROUP BY 1) per_week) running WHERE week >= :first_week ORDER BY week"
        ),
        params,
    )
    stamps = await connection.execute(
        text(
            "SELECT week, days_built_at, built_at > now() - make_interval(secs => :max_staleness_s) AS fresh"
            " FROM query_rollup_retention_weeks"
            " WHERE project_id = :project_id AND week BETWEEN :first_week AND :last_week"
        ),
        params,
    )
    stamped = {row.week: (row.days_built_at, bool(row.fresh)) for row in stamps}
    states = []
    for row in days:
        stamp, fresh = stamped.get(row.week, (None, False))
        states.append(
            RetentionWeekState(row.week, row.days_built_at, bool(row.days_current), bool(row.days_built), stamp, fresh)
        )
    return states


async def retention_weeks_to_build(
    connection: AsyncConnection, limit: int, project_id: int | None = None
) -> list[WeekToBuild]:
    """Weeks holding days with events whose stamp is not the latest build among the days up to
    their Sunday, newest first; only once each of those days has been built (while the first
    builds of a project's days go on, every round would otherwise make the later weeks stale)."""
    result = await connection.execute(
        text(
            "SELECT w.project_id, w.week FROM (SELECT project_id, week,"
            " max(built_at) OVER (PARTITION BY project_id ORDER BY week) AS days_built_at,"
            " bool_and(built) OVER (PARTITION BY project_id ORDER BY week) AS all_built"
            f" FROM (SELECT project_id, {_monday('day')} AS week, max(built_at) AS built_at,"
            " bool_and(built_at IS NOT NULL) AS built FROM query_rollup_days"
            " WHERE (CAST(:project_id AS bigint) IS NULL OR project_id = :project_id)"
            " GROUP BY 1, 2) per_week) w"
            " LEFT JOIN query_rollup_retention_weeks r ON r.project_id = w.project_id AND r.week = w.week"
            " WHERE w.all_built AND r.days_built_at IS DISTINCT FROM w.days_built_at"
            " ORDER BY w.week DESC, w.project_id LIMIT :limit"
        ),
        {"limit": limit, "project_id": project_id},
    )
    return [WeekToBuild(row.project_id, row.week) for row in result]


async def rebuild_retention_week(connection: AsyncConnection, *, project_id: int, week: date) -> bool:
    """Replace the week's retention rows; False if another process holds the week's lock (a
    builder, or a purge).

    The project's timezone is read in the statement, not passed in: a timezone change takes the
    week's lock (``lock_days``), so a build after it sees the new zone.
    """
    locked = await connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:namespace, hashtext(:key))"),
        {"namespace": ROLLUP_LOCK_NAMESPACE, "key": week_lock_key(project_id, week)},
    )
    if not locked.scalar_one():
        return False
    params = {"project_id": project_id, "week": week}
    await connection.execute(
        text(
            "DELETE FROM query_rollup_retention WHERE project_id = :project_id"
            " AND active_day BETWEEN :week AND CAST(:week AS date) + 6"
        ),
        params,
    )
    # One statement, so the stamp and the rows come from the same snapshot. The week's bounds
    # are its local midnights by the same conversion as the days (AT TIME ZONE).
    await connection.execute(
        text(
            "WITH stamp AS (INSERT INTO query_rollup_retention_weeks AS w (project_id, week, days_built_at, built_at)"
            " SELECT :project_id, :week, max(built_at), now() FROM query_rollup_days"
            " WHERE project_id = :project_id AND day <= CAST(:week AS date) + 6"
            " ON CONFLICT (project_id, week) DO UPDATE"
            " SET days_built_at = excluded.days_built_at, built_at = excluded.built_at),"
            " zone AS (SELECT timezone, CAST(:week AS date)::timestamp AT TIME ZONE timezone AS week_start,"
            " (CAST(:week AS date) + 7)::timestamp AT TIME ZONE timezone AS week_end"
            " FROM projects WHERE project_id = :project_id),"
            " active AS MATERIALIZED (SELECT s.distinct_id, min(s.started_at) AS active_at"
            " FROM query_sessions s, zone z WHERE s.project_id = :project_id"
            " AND s.started_at >= z.week_start AND s.started_at < z.week_end GROUP BY s.distinct_id),"
            " firsts AS (SELECT s.distinct_id, min(s.started_at) AS first_at FROM query_sessions s, zone z"
            " WHERE s.project_id = :project_id AND s.started_at < z.week_end"
            " AND s.distinct_id IN (SELECT distinct_id FROM active) GROUP BY s.distinct_id)"
            " INSERT INTO query_rollup_retention (project_id, active_day, first_day, visitors)"
            " SELECT :project_id, (a.active_at AT TIME ZONE z.timezone)::date,"
            " (f.first_at AT TIME ZONE z.timezone)::date, count(*)"
            " FROM active a JOIN firsts f USING (distinct_id) CROSS JOIN zone z GROUP BY 2, 3"
        ),
        params,
    )
    return True
