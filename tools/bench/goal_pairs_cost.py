"""What migration 1000's goal pairs cost the refresher: a day's pairs remade from its session days.

Run against a `make bench-query` stack (the same environment), under the bench lock:
`flock /work/bench.lock python -m tools.bench.goal_pairs_cost PROJECT_ID DAY [DAY ...] [--rounds N]`.

Each round remakes each DAY's goal pairs (goal_pairs_repository.remake, as a refresher round
does for a day whose pairs lag: once per day after it stops being the latest, again after a
late event or a goal added or deleted), one transaction per day, committed (the rows made are
the same). Merges and rebuilds do not write the goal pairs, so they cost nothing there. Wall
time and the Postgres cluster's CPU (/proc) per day; then the project's goal pair rows and the
table's size. Nothing is asserted; the figures are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from datetime import date

from sqlalchemy import text

from services.cli.stack import read_env_file
from services.common.settings import DatabaseSettings, StackSettings
from services.query import goal_pairs_repository
from services.query.tasks import rollup_engine
from tools.bench.rollups import Cost, measured


async def main(arguments: argparse.Namespace) -> None:
    stack = StackSettings.from_env()
    for key, value in read_env_file(stack.data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    postmaster_pid = int((stack.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    engine = rollup_engine(DatabaseSettings.from_env("query"))
    try:
        print(f"load average before {os.getloadavg()}", flush=True)
        costs: list[Cost] = []
        for _ in range(arguments.rounds):
            for day in arguments.days:

                async def one(day: date = day) -> None:
                    async with engine.begin() as connection:
                        if not await goal_pairs_repository.remake(connection, arguments.project_id, day):
                            raise SystemExit(f"{day}: not remade (busy, not built, the latest day, or no page goal)")

                costs.append(await measured(postmaster_pid, one))
                print(f"  remake {day}: {costs[-1]}", flush=True)
        walls = [round(cost.wall_s, 2) for cost in costs]
        cpus = [round(cost.postgres_cpu_s, 2) for cost in costs]
        print(
            f"remake per day: median wall {statistics.median(walls):.2f} s, median Postgres CPU"
            f" {statistics.median(cpus):.2f} s; each wall {walls}, CPU {cpus}"
        )
        async with engine.connect() as connection:
            counted = await connection.execute(
                text(
                    "SELECT count(*), count(DISTINCT day),"
                    " pg_size_pretty(pg_total_relation_size('query_rollup_goal_pairs'))"
                    " FROM query_rollup_goal_pairs WHERE project_id = :p"
                ),
                {"p": arguments.project_id},
            )
            rows, days, size = counted.one()
            sessions = await connection.execute(
                text(
                    "SELECT count(*) FROM query_rollup_session_days WHERE project_id = :p"
                    " AND day = ANY(CAST(:days AS date[]))"
                ),
                {"p": arguments.project_id, "days": arguments.days},
            )
        print(
            f"query_rollup_goal_pairs: {rows:,} rows over {days} days of project {arguments.project_id}"
            f" (table, all projects: {size}); the days remade hold {sessions.scalar_one():,} session days"
        )
        print(f"load average after {os.getloadavg()}", flush=True)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project_id", type=int)
    parser.add_argument("days", type=date.fromisoformat, nargs="+")
    parser.add_argument("--rounds", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
