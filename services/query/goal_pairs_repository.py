"""All SQL of the goal pairs (migration 1000). Callers own the transaction.

Per day, for each page of the project's saved page goals and each pair of visit dimensions,
a visitor sketch of the session days holding the page (`query_rollup_goal_pairs`, `grain` as
the cubes' GROUPING() bits): the Goals card's page goals under two visit chips, ~150 rows for
30 days and six goals, where the session days give ~127k scattered rows (docs/benchmarks.md,
"Goals under two visit chips: the saved goal pages per pair").

The rows are made from a day's session days only (`_DAY`), never merged into. The day's marker
(`query_rollup_goal_pair_days`) records the `built_at` of the day's `query_rollup_days` row
when they were made, which every merge into the day and every rebuild sets anew, and the goal
pages they were made for. A query reads a day's rows only while both still hold (`current_days`);
other rolled days are read from their session days. Each refresher round remakes a few such
days (`days_to_remake`, `remake`), the latest first, never a project's latest day (live ingest
merges into it all day: that one day is read from its session days). A goal added or deleted
changes the pages, so every day is remade in turn; until then its days answer from the session
days. Both tables go with their days (rollup_purge_repository.INCREMENT_TABLES).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.citus_repository import is_citus
from services.common.rollup_purge_repository import ROLLUP_LOCK_NAMESPACE, day_lock_key
from services.query.vocabulary import HLL_LOG2M, VISIT_DIMENSIONS

GOAL_PAIRS_TABLE = "query_rollup_goal_pairs"
GOAL_PAIR_DAYS_TABLE = "query_rollup_goal_pair_days"
# Days remade per refresher round at most: ~1.5 s each for a day of 93,000 session days with five
# goal pages at 10M events (docs/benchmarks.md); a new goal's 30 days are remade in 8 rounds.
REMAKE_DAYS_PER_ROUND = 4


@dataclass(frozen=True)
class DayToRemake:
    project_id: int
    day: date


_SD_VISITS = ", ".join(f"sd.{name}" for name in VISIT_DIMENSIONS)
_PAIRS = ", ".join(
    f"(sd.{first}, sd.{second})"
    for index, first in enumerate(VISIT_DIMENSIONS)
    for second in VISIT_DIMENSIONS[index + 1 :]
)
# One day's rows for the listed pages (:pages), from its session days; sorted, not hashed (a
# sketch's aggregate state is too big for a hash table of thousands of groups).
_DAY = (
    f"INSERT INTO {GOAL_PAIRS_TABLE} (project_id, day, grain, page, {', '.join(VISIT_DIMENSIONS)}, visitors)"
    f" SELECT sd.project_id, sd.day, GROUPING({_SD_VISITS}), x.value, {_SD_VISITS},"
    f" hll_add_agg(hll_hash_text(sd.distinct_id), {HLL_LOG2M})"
    " FROM query_rollup_session_days sd CROSS JOIN unnest(CAST(:pages AS text[])) AS x(value)"
    " WHERE sd.project_id = :project_id AND sd.day = :day AND x.value = ANY(sd.pages)"
    f" GROUP BY sd.project_id, sd.day, x.value, GROUPING SETS ({_PAIRS})"
)


async def goal_pages(connection: AsyncConnection, project_id: int) -> list[str]:
    """The project's saved page goals' paths, sorted."""
    result = await connection.execute(
        text("SELECT DISTINCT value FROM query_goals WHERE project_id = :project_id AND kind = 'page' ORDER BY 1"),
        {"project_id": project_id},
    )
    return list(result.scalars())


async def current_days(
    connection: AsyncConnection, project_id: int, date_from: date, date_to: date, pages: list[str]
) -> set[date]:
    """The days of the range whose goal pairs hold these pages and match their session days."""
    result = await connection.execute(
        text(
            f"SELECT m.day FROM {GOAL_PAIR_DAYS_TABLE} m JOIN query_rollup_days d"
            " ON d.project_id = m.project_id AND d.day = m.day"
            " WHERE m.project_id = :project_id AND m.day BETWEEN :date_from AND :date_to"
            " AND d.built_at = m.built_at AND m.pages @> CAST(:pages AS text[])"
        ),
        {"project_id": project_id, "date_from": date_from, "date_to": date_to, "pages": pages},
    )
    return set(result.scalars())


async def remake_day(
    connection: AsyncConnection, project_id: int, day: date, built_at: datetime, pages: list[str]
) -> None:
    """The day's goal pairs made anew from its session days, and its marker (hold its lock; a
    transaction of its own: it turns hash aggregation off until it ends)."""
    params: dict[str, object] = {"project_id": project_id, "day": day, "pages": pages, "built_at": built_at}
    await connection.execute(
        text(f"DELETE FROM {GOAL_PAIRS_TABLE} WHERE project_id = :project_id AND day = :day"), params
    )
    if await is_citus(connection):
        # Pushed down, the statement is planned by the worker with its settings unless this
        # transaction's SET LOCAL goes along (as in rollup_repository.rebuild_day).
        await connection.execute(text("SET LOCAL citus.propagate_set_commands TO 'local'"))
    # For the rest of the transaction: the caller's holds this day's remake only.
    await connection.execute(text("SET LOCAL enable_hashagg TO off"))
    await connection.execute(text(_DAY), params)
    await connection.execute(
        text(
            f"INSERT INTO {GOAL_PAIR_DAYS_TABLE} AS m (project_id, day, built_at, pages)"
            " VALUES (:project_id, :day, :built_at, CAST(:pages AS text[]))"
            " ON CONFLICT (project_id, day) DO UPDATE SET built_at = excluded.built_at, pages = excluded.pages"
        ),
        params,
    )


_PROJECT = "(CAST(:project_id AS bigint) IS NULL OR {alias}project_id = :project_id)"


async def days_to_remake(connection: AsyncConnection, limit: int, project_id: int | None = None) -> list[DayToRemake]:
    """Built days (not a project's latest) of projects with page goals whose goal pairs do not
    match their session days or the goal pages, the latest first."""
    result = await connection.execute(
        text(
            # Each part filtered by the project (when given) so that Citus routes it to one shard.
            "SELECT d.project_id, d.day FROM query_rollup_days d"
            " JOIN (SELECT project_id, array_agg(DISTINCT value ORDER BY value) AS pages FROM query_goals"
            f" WHERE kind = 'page' AND {_PROJECT.format(alias='')} GROUP BY project_id) g"
            " ON g.project_id = d.project_id"
            " JOIN (SELECT project_id, max(day) AS latest FROM query_rollup_days"
            f" WHERE {_PROJECT.format(alias='')} GROUP BY project_id) l ON l.project_id = d.project_id"
            f" LEFT JOIN {GOAL_PAIR_DAYS_TABLE} m ON m.project_id = d.project_id AND m.day = d.day"
            f" WHERE {_PROJECT.format(alias='d.')} AND d.built_changes IS NOT NULL AND d.built_at IS NOT NULL"
            " AND d.day < l.latest AND (m.day IS NULL OR m.built_at <> d.built_at OR m.pages <> g.pages)"
            " ORDER BY d.day DESC, d.project_id LIMIT :limit"
        ),
        {"project_id": project_id, "limit": limit},
    )
    return [DayToRemake(row.project_id, row.day) for row in result]


async def remake(connection: AsyncConnection, project_id: int, day: date) -> bool:
    """The day's goal pairs made anew if its lock is free and it is still built, not the project's
    latest day, and the project has page goals; whether they were."""
    locked = await connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:namespace, hashtext(:key))"),
        {"namespace": ROLLUP_LOCK_NAMESPACE, "key": day_lock_key(project_id, day)},
    )
    if not locked.scalar_one():
        return False
    # Read under the lock: no merge or rebuild of the day commits until this transaction does.
    marker = await connection.execute(
        text(
            "SELECT d.built_at FROM query_rollup_days d WHERE d.project_id = :project_id AND d.day = :day"
            " AND d.built_changes IS NOT NULL AND d.built_at IS NOT NULL"
            " AND EXISTS (SELECT FROM query_rollup_days l WHERE l.project_id = :project_id AND l.day > :day)"
        ),
        {"project_id": project_id, "day": day},
    )
    built_at = marker.scalar_one_or_none()
    pages = await goal_pages(connection, project_id)
    if built_at is None or not pages:
        return False
    await remake_day(connection, project_id, day, built_at, pages)
    return True
