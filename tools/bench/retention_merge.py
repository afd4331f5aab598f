"""What a refresh pays for the retention cohorts, by the size of the week (issue #15, migration 1200).

Until 1200 every refresh that built a day rebuilt the week's retention rows whole: under live
ingest the current week in every round, a cost in proportion to the visitors of the week. Since
1200 a merge takes out and puts back the rows of the visitors whose days it changes only
(services/query/rollup_repository.py, "Retention cohorts"). This compares, on one stack and in
turns, for weeks of --visitors visitors each:

- `rebuild from query_sessions (before 1200)`: the week's rows as the refresher made them every
  round before (the statement as it was, kept here);
- `rebuild from the folded sessions`: `rebuild_retention_week` now (after a day rebuild or a purge);
- `merge of the batch`: one `refresh_project` merging --batch new sessions (half of new visitors,
  half of the week's visitors back on a new day), and of its CPU the retention statements'.

Per size, a fresh project (timezone UTC) gets one single-event session per visitor over Monday to
Wednesday of the week of 2026-11-23 and its days built; the batch lands on the Thursday (the
project's latest day: merged from empty, as today is under live ingest). Every timed run is
rolled back, so each sees the same state. Backend CPU from /proc, on a connection straight to
Postgres. Run it against a stack `sightline up` started with the refresher off
(SIGHTLINE_QUERY_ROLLUP_INTERVAL_S=0) and no load. Nothing is asserted; one JSON line per size:

    python -m tools.bench.retention_merge --visitors 5000 50000 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.cli import admin
from services.common.partition_repository import ensure_event_partitions
from services.common.settings import AdminDatabaseSettings
from services.query import rollup_repository
from services.query.tasks import refresh_until_current
from tools.bench.merge_replay import stack_rollup_engine
from tools.bench.refresher_cpu import StatementCpu, process_cpu_s

WEEK = date(2026, 11, 23)  # a Monday
BATCH_DAY = WEEK + timedelta(days=3)

# The week's rows as rebuild_retention_week wrote them before 1200: from query_sessions.
_BEFORE_1200 = (
    "INSERT INTO query_rollup_retention (project_id, active_day, first_day, visitors)"
    " SELECT a.project_id, (a.active_at AT TIME ZONE :timezone)::date, (a.first_at AT TIME ZONE :timezone)::date,"
    " count(*) FROM (SELECT s.project_id, s.distinct_id, min(s.started_at) AS active_at,"
    " (SELECT min(f.started_at) FROM query_sessions f WHERE f.project_id = s.project_id"
    " AND f.distinct_id = s.distinct_id) AS first_at"
    " FROM query_sessions s WHERE s.project_id = :project_id"
    " AND s.started_at >= CAST(:week AS date)::timestamp AT TIME ZONE :timezone"
    " AND s.started_at < (CAST(:week AS date) + 7)::timestamp AT TIME ZONE :timezone"
    " GROUP BY s.project_id, s.distinct_id) a GROUP BY a.project_id, 2, 3"
)
_DELETE_WEEK = (
    "DELETE FROM query_rollup_retention WHERE project_id = :project_id"
    " AND active_day BETWEEN :week AND CAST(:week AS date) + 6"
)
# One pageview per session: `:sessions` sessions from :first, a second apart, visitor
# :prefix || (n + :offset), session :prefix || 's' || n.
_SESSIONS = (
    "INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path)"
    " SELECT :project_id, CAST(:first AS timestamptz) + n * interval '1 second', gen_random_uuid(), 'pageview',"
    " :prefix || (n + :offset), :session_prefix || n, 'https://example.com/', 'example.com', '/'"
    " FROM generate_series(1, :sessions) AS n"
)
# The statements of a merge that keep the retention cohorts (their openings).
_RETENTION_STATEMENTS = (
    "SELECT v.distinct_id, v.day FROM unnest(",
    "SELECT bool_and(pg_try_advisory_xact_lock(",
    "INSERT INTO query_rollup_retention AS r ",
    "DELETE FROM query_rollup_retention WHERE",
    "SELECT week, days_built_at, days_current, days_built FROM",
    "SELECT week, days_built_at, built_at > now()",
    "UPDATE query_rollup_retention_weeks ",
)


async def _insert(engine: AsyncEngine, project_id: int, **params: Any) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(_SESSIONS), {"project_id": project_id, **params})


async def prepare(engine: AsyncEngine, visitors: int, batch: int, analyze: bool) -> int:
    """A project holding `visitors` visitors in WEEK (built), and a batch of new sessions pending;
    with `analyze`, the database's statistics gathered after the build (as autovacuum would soon)."""
    settings = AdminDatabaseSettings.from_env()
    project: dict[str, Any] = await admin.create_project(
        settings, name=f"retention bench {visitors} {datetime.now(UTC):%H%M%S}", domains=["example.com"], timezone="UTC"
    )
    project_id = int(project["id"])
    async with engine.begin() as connection:
        await ensure_event_partitions(connection, WEEK, WEEK + timedelta(days=6))
    per_day = -(-visitors // 3)
    for index in range(3):
        day = datetime.combine(WEEK + timedelta(days=index), datetime.min.time(), UTC)
        count = min(per_day, visitors - index * per_day)
        await _insert(
            engine,
            project_id,
            first=day,
            sessions=count,
            prefix="v",
            offset=index * per_day,
            session_prefix=f"d{index}s",
        )
    await refresh_until_current(engine, 100, project_id)
    if analyze:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("ANALYZE"))
    thursday = datetime.combine(BATCH_DAY, datetime.min.time(), UTC)
    # Half new visitors, half of the week's back (visitors v1, v2, ...).
    await _insert(engine, project_id, first=thursday, sessions=batch // 2, prefix="n", offset=0, session_prefix="bn")
    await _insert(
        engine,
        project_id,
        first=thursday + timedelta(hours=1),
        sessions=batch - batch // 2,
        prefix="v",
        offset=0,
        session_prefix="bv",
    )
    return project_id


async def _timed(connection: AsyncConnection, run: Any) -> float:
    pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    before = process_cpu_s(pid)
    await run()
    return process_cpu_s(pid) - before


async def measure(
    engine: AsyncEngine, statements: StatementCpu, project_id: int, repeat: int
) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """The median CPU (ms) of each, and the merge's statements by CPU summed over the runs (ms)."""
    runs: dict[str, list[float]] = {"before_1200_rebuild": [], "folded_rebuild": [], "merge": [], "merge_retention": []}
    merge_statements: dict[str, float] = {}
    params = {"project_id": project_id, "week": WEEK, "timezone": "UTC"}
    for _ in range(repeat):
        async with engine.connect() as connection:

            async def old() -> None:
                await connection.execute(text(_DELETE_WEEK), params)
                await connection.execute(text(_BEFORE_1200), params)

            runs["before_1200_rebuild"].append(await _timed(connection, old))
            await connection.rollback()

            async def folded() -> None:
                if not await rollup_repository.rebuild_retention_week(connection, project_id=project_id, week=WEEK):
                    raise RuntimeError("the week's lock is held")

            runs["folded_rebuild"].append(await _timed(connection, folded))
            await connection.rollback()

            statements.totals.clear()

            async def merge() -> None:
                refresh = rollup_repository.ProjectToRefresh(project_id, "UTC")
                outcome = await rollup_repository.refresh_project(connection, refresh, 0)
                if outcome is None or outcome.merged_events == 0:
                    raise RuntimeError(f"the batch was not merged: {outcome}")

            runs["merge"].append(await _timed(connection, merge))
            runs["merge_retention"].append(
                sum(
                    cpu
                    for statement, (cpu, _, _) in statements.totals.items()
                    if statement.startswith(_RETENTION_STATEMENTS)
                )
            )
            for statement, (cpu, _, _) in statements.totals.items():
                merge_statements[statement] = merge_statements.get(statement, 0.0) + cpu
            await connection.rollback()
    medians = {name: round(statistics.median(values) * 1000, 1) for name, values in runs.items()}
    top = sorted(((round(cpu * 1000), statement[:100]) for statement, cpu in merge_statements.items()), reverse=True)
    return medians, [row for row in top if row[0] > 0]


async def main(arguments: argparse.Namespace) -> None:
    engine = stack_rollup_engine()
    statements = StatementCpu()
    statements.attach(engine)
    try:
        for visitors in arguments.visitors:
            project_id = await prepare(engine, visitors, arguments.batch, arguments.analyze)
            figures, top = await measure(engine, statements, project_id, arguments.repeat)
            print(
                json.dumps(
                    {
                        "week_visitors": visitors,
                        "batch_sessions": arguments.batch,
                        "project_id": project_id,
                        "median_cpu_ms": figures,
                        "repeat": arguments.repeat,
                        "analyzed": arguments.analyze,
                        "merge_statements_cpu_ms_summed": top[: arguments.top],
                    }
                ),
                flush=True,
            )
    finally:
        await engine.dispose()


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, nargs="+", default=[5000, 50000, 200000], help="the week's visitors")
    parser.add_argument("--batch", type=int, default=200, help="sessions merged (half new visitors, half back)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each, in turns (the median is printed)")
    parser.add_argument("--top", type=int, default=10, help="the merge's costliest statements printed")
    parser.add_argument("--analyze", action="store_true", help="ANALYZE after the build, before the batch")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_arguments()))
