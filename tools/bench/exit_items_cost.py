"""What migration 0900's exit-page items add to a day's rebuild and to a merge: without and with, alternating.

Run against a `make bench-query` stack (the same environment), under the bench lock:
`flock /work/bench.lock python -m tools.bench.exit_items_cost PROJECT_ID DAY [--rounds N] [--batch B]`.

- Rebuild: each round rebuilds the built DAY of PROJECT_ID (rollup_repository.rebuild_day)
  without the exit-page items' statement, then with it; the last is with, so the day's rows
  stay whole.
- Merge: a fresh project gets a day of events today (the `make bench-rollups` loader, --events),
  built once; then each round inserts a batch like live ingest's (half extending the day's
  sessions, which moves their exit page; half new sessions; bench-rollups' BATCH_SQL) and
  refreshes it, alternately without and with the items' statements (the items of the
  "without" merges are left stale: only the time is measured; the project is a throwaway).
  The day is the project's latest, so since the stale marker the merges leave its items
  (what is left to measure is the marker); before it they rewrote every exit page left.

Wall time and the Postgres cluster's CPU (/proc) per rebuild and merge. Nothing is asserted;
the figures are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text

from services.cli import admin
from services.cli.stack import read_env_file
from services.common.db import create_admin_engine
from services.common.partition_repository import ensure_event_partitions
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, StackSettings
from services.query import rollup_repository
from services.query.tasks import refresh_until_current, rollup_engine
from tools.bench.cube_cost import rebuild
from tools.bench.query import LOAD_DAY_SQL, TIMEZONE
from tools.bench.rollups import BATCH_SQL, Cost, measured

_ITEM_STATEMENTS = ("_EXIT_ITEMS_OLD", "_EXIT_ITEMS_NEW", "_EXIT_ITEMS_LEFT_DELETE", "_EXIT_ITEMS_LEFT_WRITE")


@contextmanager
def without_exit_items() -> Iterator[None]:
    """The refresher's exit-page items statements replaced by a no-op while inside."""
    saved = {name: getattr(rollup_repository, name) for name in (*_ITEM_STATEMENTS, "_EXIT_ITEMS_DAY")}
    try:
        for name in saved:
            setattr(rollup_repository, name, "SELECT 1")
        yield
    finally:
        for name, statement in saved.items():
            setattr(rollup_repository, name, statement)


def summary(label: str, costs: list[Cost]) -> str:
    walls = [round(cost.wall_s, 2) for cost in costs]
    cpus = [round(cost.postgres_cpu_s, 2) for cost in costs]
    return (
        f"{label}: median wall {statistics.median(walls):.2f} s, median Postgres CPU {statistics.median(cpus):.2f} s;"
        f" each wall {walls}, CPU {cpus}"
    )


async def main(arguments: argparse.Namespace) -> None:
    stack = StackSettings.from_env()
    for key, value in read_env_file(stack.data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    postmaster_pid = int((stack.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    admin_settings = AdminDatabaseSettings.from_env()
    engine = rollup_engine(DatabaseSettings.from_env("query"))
    admin_engine = create_admin_engine(admin_settings)
    try:
        print(f"load average before {os.getloadavg()}", flush=True)
        async with engine.connect() as connection:
            timezone = (
                await connection.execute(
                    text("SELECT timezone FROM projects WHERE project_id = :p"), {"p": arguments.project_id}
                )
            ).scalar_one()
        rebuilds: dict[str, list[Cost]] = {"without": [], "with": []}
        for _ in range(arguments.rounds):
            for label in ("without", "with"):

                async def one(label: str = label) -> None:
                    if label == "without":
                        with without_exit_items():
                            await rebuild(engine, arguments.project_id, timezone, arguments.day)
                    else:
                        await rebuild(engine, arguments.project_id, timezone, arguments.day)

                rebuilds[label].append(await measured(postmaster_pid, one))
                print(f"  rebuild {label}: {rebuilds[label][-1]}", flush=True)

        # A throwaway project with a day of events today, built once, then merges.
        zone = ZoneInfo(TIMEZONE)
        now = datetime.now(UTC)
        day_start = datetime.combine(now.astimezone(zone).date(), datetime.min.time(), zone)
        window_start = max(day_start, now - timedelta(hours=6))
        name = f"bench-exit-items-{arguments.events}-{int(now.timestamp())}"
        project = await admin.create_project(admin_settings, name=name, domains=["example.com"], timezone=TIMEZONE)
        project_id = int(str(project["id"]))
        async with admin_engine.begin() as connection:
            await ensure_event_partitions(
                connection, day_start.date() - timedelta(days=1), now.date() + timedelta(days=1)
            )
            loaded = await connection.execute(
                text(LOAD_DAY_SQL),
                {
                    "project_id": project_id,
                    "visitor_pool": max(1000, arguments.events // 8),
                    "day_start": window_start.astimezone(UTC),
                    "day_end": now,
                    "sessions": int(arguments.events / 3.5),
                    "day_key": f"exititems{arguments.events}",
                },
            )
        print(f"  {name}: {loaded.rowcount:,} events loaded", flush=True)
        async with admin_engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("VACUUM ANALYZE events, query_sessions, query_rollup_days"))
        await refresh_until_current(engine, 10, project_id)
        merges: dict[str, list[Cost]] = {"without": [], "with": []}
        for round_number in range(arguments.rounds):
            for label in ("without", "with"):
                async with admin_engine.begin() as connection:
                    await connection.execute(
                        text(BATCH_SQL),
                        {
                            "project_id": project_id,
                            "old": arguments.batch // 2,
                            "new": arguments.batch - arguments.batch // 2,
                            "round": f"{label}{round_number}",
                        },
                    )

                async def merge(label: str = label) -> None:
                    if label == "without":
                        with without_exit_items():
                            await refresh_until_current(engine, 10, project_id)
                    else:
                        await refresh_until_current(engine, 10, project_id)

                merges[label].append(await measured(postmaster_pid, merge))
                print(f"  merge of {arguments.batch} {label}: {merges[label][-1]}", flush=True)
        print(f"load average after {os.getloadavg()}", flush=True)
        for label, costs in rebuilds.items():
            print(summary(f"rebuild of {arguments.day} (project {arguments.project_id}) {label} exit items", costs))
        for label, costs in merges.items():
            print(summary(f"merge of {arguments.batch} events into {loaded.rowcount:,} {label} exit items", costs))
        async with engine.connect() as connection:
            rows, days = (
                await connection.execute(
                    text("SELECT count(*), count(DISTINCT day) FROM query_rollup_exit_items WHERE project_id = :p"),
                    {"p": arguments.project_id},
                )
            ).one()
            size = (
                await connection.execute(
                    text("SELECT pg_size_pretty(pg_total_relation_size('query_rollup_exit_items'))")
                )
            ).scalar_one()
        print(f"query_rollup_exit_items: {rows:,} rows over {days} days of project {arguments.project_id}; all: {size}")
    finally:
        await engine.dispose()
        await admin_engine.dispose()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("project_id", type=int)
    parser.add_argument("day", type=date.fromisoformat, help="a built local day of the project, YYYY-MM-DD")
    parser.add_argument("--rounds", type=int, default=3, help="rebuilds and merges of each kind (default 3)")
    parser.add_argument("--batch", type=int, default=500, help="events per merged batch (default 500)")
    parser.add_argument("--events", type=int, default=320_000, help="events in the merged project's day")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
