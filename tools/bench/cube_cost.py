"""What migration 0850's session-day pages and event names add to a day's rebuild: without and with, alternating.

Run against a `make bench-query` stack whose project is built (the same environment), under the
bench lock: `flock /work/bench.lock python -m tools.bench.cube_cost PROJECT_ID DAY [ROUNDS]`.
Each round rebuilds the day (rollup_repository.rebuild_day, plain Postgres's one statement)
with the session days as they were before 0850 (no pages, no event names), then with this
branch's; the last rebuild is this branch's, so the day's rows stay whole. Then each cube
table's and the session days' rows for the project and size on disk. (Before 0850 this
compared 0810's cubes with the ones before them, in the same way.) Nothing is asserted; the
figures are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import date, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli.stack import read_env_file
from services.common.settings import DatabaseSettings, StackSettings
from services.query import rollup_repository, vocabulary
from services.query.planner import local_midnight
from services.query.repository import configure_transaction
from services.query.tasks import rollup_engine

BRANCH = vocabulary.CUBES


def _statements() -> dict[str, str]:
    return {
        "main": rollup_repository._rebuild_one_statement(session_day_items=False),
        "branch": rollup_repository._rebuild_one_statement(),
    }


async def rebuild(engine: AsyncEngine, project_id: int, timezone: str, day: date) -> float:
    async with engine.begin() as connection:
        await rollup_repository._try_lock_days(connection, project_id, [day])
        await configure_transaction(connection)
        started = time.monotonic()
        await rollup_repository.rebuild_day(
            connection,
            project_id=project_id,
            timezone=timezone,
            day=day,
            start=local_midnight(day, timezone),
            end=local_midnight(day + timedelta(days=1), timezone),
        )
        return time.monotonic() - started


async def main(arguments: argparse.Namespace) -> None:
    for key, value in read_env_file(StackSettings.from_env().data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    statements = _statements()
    engine = rollup_engine(DatabaseSettings.from_env("query"))
    try:
        async with engine.connect() as connection:
            timezone = (
                await connection.execute(
                    text("SELECT timezone FROM projects WHERE project_id = :p"), {"p": arguments.project_id}
                )
            ).scalar_one()
        print(f"load average before {os.getloadavg()}", flush=True)
        times: dict[str, list[float]] = {"main": [], "branch": []}
        for label in ("main", "branch") * arguments.rounds:
            rollup_repository._REBUILD_ONE_STATEMENT = statements[label]
            times[label].append(await rebuild(engine, arguments.project_id, timezone, arguments.day))
            print(f"  {label}: {times[label][-1]:.2f} s", flush=True)
        print(f"load average after {os.getloadavg()}", flush=True)
        for label, samples in times.items():
            print(f"{label}: mean {sum(samples) / len(samples):.2f} s, each {[round(s, 2) for s in samples]}")
        async with engine.connect() as connection:
            for table in (*(cube.table for cube in BRANCH), "query_rollup_session_days"):
                rows, days = (
                    await connection.execute(
                        text(f"SELECT count(*), count(DISTINCT day) FROM {table} WHERE project_id = :p"),
                        {"p": arguments.project_id},
                    )
                ).one()
                size = (
                    await connection.execute(text(f"SELECT pg_size_pretty(pg_total_relation_size('{table}'))"))
                ).scalar_one()
                print(f"{table}: {rows:,} rows over {days} days of the project; with its indexes {size}")
    finally:
        await engine.dispose()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("project_id", type=int)
    parser.add_argument("day", type=date.fromisoformat, help="a built local day of the project, YYYY-MM-DD")
    parser.add_argument("rounds", type=int, nargs="?", default=2, help="rebuilds of each kind (default 2)")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
