"""What migration 0920's visit-column indexes on the session days add to a day's rebuild: without and with, alternating.

Run against a bench stack whose project is built (the same environment), under the bench lock:
`flock /work/bench.lock python -m tools.bench.session_day_index_cost PROJECT_ID DAY [ROUNDS]`.
Each round rebuilds the day (rollup_repository.rebuild_day, as cube_cost does) in a transaction
that first drops 0920's indexes and is rolled back (the day and the indexes stay as they were),
then in one that keeps them and commits. The owner's connection (SIGHTLINE_ADMIN_DATABASE_URL)
runs both, since dropping an index is DDL. Then the indexes' size. Nothing is asserted; the
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
from services.common.db import create_admin_engine
from services.common.settings import AdminDatabaseSettings, StackSettings
from services.query import rollup_repository
from services.query.planner import local_midnight
from services.query.repository import configure_transaction
from services.query.vocabulary import DIMENSIONS, VISIT_DIMENSIONS

INDEXES = tuple(f"ix_query_rollup_session_days_project_id_day_{DIMENSIONS[name].rolled}" for name in VISIT_DIMENSIONS)


async def rebuild(engine: AsyncEngine, project_id: int, timezone: str, day: date, with_indexes: bool) -> float:
    async with engine.connect() as connection:
        transaction = await connection.begin()
        if not with_indexes:
            await connection.execute(text(f"DROP INDEX {', '.join(INDEXES)}"))
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
        elapsed = time.monotonic() - started
        if with_indexes:
            await transaction.commit()
        else:
            await transaction.rollback()
        return elapsed


async def main(arguments: argparse.Namespace) -> None:
    for key, value in read_env_file(StackSettings.from_env().data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    engine = create_admin_engine(AdminDatabaseSettings.from_env())
    try:
        async with engine.connect() as connection:
            timezone = (
                await connection.execute(
                    text("SELECT timezone FROM projects WHERE project_id = :p"), {"p": arguments.project_id}
                )
            ).scalar_one()
        print(f"load average before {os.getloadavg()}", flush=True)
        times: dict[str, list[float]] = {"without": [], "with": []}
        for label in ("without", "with") * arguments.rounds:
            times[label].append(await rebuild(engine, arguments.project_id, timezone, arguments.day, label == "with"))
            print(f"  {label} the indexes: {times[label][-1]:.2f} s", flush=True)
        print(f"load average after {os.getloadavg()}", flush=True)
        for label, samples in times.items():
            print(f"{label}: mean {sum(samples) / len(samples):.2f} s, each {[round(s, 2) for s in samples]}")
        async with engine.connect() as connection:
            for index in INDEXES:
                size = (
                    await connection.execute(text(f"SELECT pg_size_pretty(pg_relation_size('{index}'))"))
                ).scalar_one()
                print(f"{index}: {size} (all projects)")
            rows = (await connection.execute(text("SELECT count(*) FROM query_rollup_session_days"))).scalar_one()
            print(f"query_rollup_session_days: {rows:,} rows (all projects)")
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
