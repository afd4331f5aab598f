"""`make bench-rollups`: what a rollup refresh costs, against the size of the day it refreshes.

Runs against a stack started by `sightline up` with the same environment (the Makefile target
uses its own data directory and ports, with the query service's refresher off). For each size,
a fresh project gets that many events today so far (the generator of `make bench-query`), then:

- rebuild: the day marked never built and refreshed, which rebuilds it from all its events:
  what every refresh cost before migration 0730, and still what a delete or a late earlier
  event costs;
- merge: a batch of new events (half of them extending sessions already in the day, half new
  sessions) refreshed, several times: what a refresh costs under live ingest now.

Each is timed by the wall clock and by the CPU the cluster's Postgres processes used
(/proc, utime + stime of the postmaster and its children). Nothing is asserted; the figures are
printed and written to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import text

from services.cli import admin
from services.cli.stack import read_env_file
from services.common.db import create_admin_engine
from services.common.partition_repository import ensure_event_partitions
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, StackSettings
from services.query.tasks import refresh_until_current, rollup_engine
from tools.bench.query import LOAD_DAY_SQL, TIMEZONE
from tools.benchmarks_file import machine_line, write_section

MARKERS = (
    "<!-- bench-rollups:start -->",
    "<!-- bench-rollups:end -->",
    "## Rollup refresh: rebuilding a day vs merging what arrived (`make bench-rollups`)",
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# A batch like live ingest's: events at "now" for existing sessions (a next page, which moves
# their exit page) and for new sessions, from the day's visitor pool. Exactly now(), later than
# any event before: events up to 5 s in the future made the next round, when it came sooner,
# give some sessions an event before their first, which makes the day unbuildable (a rebuild
# measured as a merge).
BATCH_SQL = """
INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path,
                    browser, os, device_type, country)
SELECT CAST(:project_id AS bigint), now(), gen_random_uuid(), 'pageview',
       s.distinct_id, s.session_id, 'https://example.com' || p.path, 'example.com', p.path,
       'Chrome', 'Windows', 'desktop', 'DE'
FROM (
    (SELECT session_id, distinct_id FROM query_sessions WHERE project_id = CAST(:project_id AS bigint)
     ORDER BY random() LIMIT CAST(:old AS int))
    UNION ALL
    SELECT 'new-' || CAST(:round AS text) || '-' || n, 'visitor-new-' || n
    FROM generate_series(1, CAST(:new AS int)) AS n
) s
CROSS JOIN LATERAL (
    SELECT (ARRAY['/','/pricing','/docs','/blog','/features','/signup','/about','/contact'])
           -- (the reference to s makes the page drawn per row, not once)
           [1 + floor(random() * 8 + 0 * length(s.session_id))::int] AS path
) AS p
"""


def log(message: str) -> None:
    print(message, flush=True)


def postgres_cpu_s(postmaster_pid: int) -> float:
    """CPU seconds used so far by the postmaster and every process it started (the backends),
    including those that have exited: the postmaster reaps them, so their time is in its
    cutime and cstime (without those, a backend or autovacuum worker exiting during a
    measurement took its time out of the total)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        pid, parent = int(entry.name), int(fields[1])
        if pid == postmaster_pid:
            total += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
        elif parent == postmaster_pid:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


@dataclass
class Cost:
    wall_s: float
    postgres_cpu_s: float


@dataclass
class SizeResult:
    events: int
    rebuild: Cost
    merge: Cost  # the mean of the merges
    merge_cpu_s: list[float]  # each merge's Postgres CPU, in order


async def measured(postmaster_pid: int, work: Callable[[], Awaitable[object]]) -> Cost:
    cpu_before, started = postgres_cpu_s(postmaster_pid), time.monotonic()
    await work()
    return Cost(time.monotonic() - started, postgres_cpu_s(postmaster_pid) - cpu_before)


async def bench_size(
    admin_settings: AdminDatabaseSettings,
    database: DatabaseSettings,
    postmaster_pid: int,
    events: int,
    batch: int,
    rounds: int,
) -> SizeResult:
    zone = ZoneInfo(TIMEZONE)
    now = datetime.now(UTC)
    day_start = datetime.combine(now.astimezone(zone).date(), datetime.min.time(), zone)
    # The day's events spread over the last six hours (or since midnight, if less).
    window_start = max(day_start, now - timedelta(hours=6))
    name = f"bench-rollups-{events}-{int(now.timestamp())}"
    project = await admin.create_project(admin_settings, name=name, domains=["example.com"], timezone=TIMEZONE)
    project_id = int(str(project["id"]))
    admin_engine = create_admin_engine(admin_settings)
    engine = rollup_engine(database)
    try:
        async with admin_engine.begin() as connection:
            await ensure_event_partitions(
                connection, day_start.date() - timedelta(days=1), now.date() + timedelta(days=1)
            )
            loaded = await connection.execute(
                text(LOAD_DAY_SQL),
                {
                    "project_id": project_id,
                    "visitor_pool": max(1000, events // 8),
                    "day_start": window_start.astimezone(UTC),
                    "day_end": now,
                    "sessions": int(events / 3.5),
                    "day_key": f"bench{events}",
                },
            )
        log(f"  {name}: {loaded.rowcount:,} events loaded")
        async with admin_engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            # Vacuumed now, so autovacuum does not run on the load's tables during the timings.
            await connection.execute(text("VACUUM ANALYZE events, query_sessions, query_rollup_days"))

        async def refresh() -> None:
            await refresh_until_current(engine, 10, project_id)

        await refresh()  # the first build (warms the caches too)
        async with admin_engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("VACUUM ANALYZE"))

        async def rebuild() -> None:
            async with admin_engine.begin() as connection:
                await connection.execute(
                    text("UPDATE query_rollup_days SET built_changes = NULL WHERE project_id = :p"), {"p": project_id}
                )
            await refresh()

        rebuild_cost = await measured(postmaster_pid, rebuild)
        log(f"    rebuild: {rebuild_cost.wall_s:.2f} s wall, {rebuild_cost.postgres_cpu_s:.2f} s Postgres CPU")
        merges: list[Cost] = []
        for round_number in range(rounds):
            async with admin_engine.begin() as connection:
                await connection.execute(
                    text(BATCH_SQL),
                    {
                        "project_id": project_id,
                        "old": batch // 2,
                        "new": batch - batch // 2,
                        "round": str(round_number),
                    },
                )
            merges.append(await measured(postmaster_pid, refresh))
            log(f"    merge of {batch} events: {merges[-1].wall_s:.2f} s wall, {merges[-1].postgres_cpu_s:.2f} s CPU")
        mean = Cost(sum(c.wall_s for c in merges) / rounds, sum(c.postgres_cpu_s for c in merges) / rounds)
        return SizeResult(int(loaded.rowcount), rebuild_cost, mean, [c.postgres_cpu_s for c in merges])
    finally:
        await engine.dispose()
        await admin_engine.dispose()


def markdown(results: list[SizeResult], batch: int, rounds: int, command: str, loads: str) -> str:
    lines = [
        MARKERS[0],
        "",
        machine_line(),
        f"Command: `{command}`. Load average (1, 5, 15 min): {loads}.",
        "",
        f"Per size, one project with that many events today; rebuild = the day marked never built and refreshed"
        f" (what every refresh cost before migration 0730); merge = a batch of {batch} events (half extending"
        f" sessions of the day, half new sessions) refreshed, mean of {rounds}. CPU is the Postgres cluster's"
        " (postmaster and backends, /proc, with the exited ones the postmaster reaped); the tables are vacuumed"
        " after the load and after the first build, so autovacuum stays out of the timings. On a busy machine"
        " single merges still vary: the median and every merge's CPU are listed.",
        "",
        "| events in the day | rebuild: wall s | rebuild: Postgres CPU s | merge: wall s | merge: Postgres CPU s"
        " | merge / rebuild (CPU) | merge: median CPU s | each merge's CPU s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        rebuild, merge = result.rebuild, result.merge
        ratio = merge.postgres_cpu_s / rebuild.postgres_cpu_s if rebuild.postgres_cpu_s else 0.0
        each = ", ".join(f"{cpu:.2f}" for cpu in result.merge_cpu_s)
        lines.append(
            f"| {result.events:,} | {rebuild.wall_s:.2f} | {rebuild.postgres_cpu_s:.2f} | {merge.wall_s:.2f}"
            f" | {merge.postgres_cpu_s:.2f} | {ratio:.1%} | {statistics.median(result.merge_cpu_s):.2f} | {each} |"
        )
    lines += ["", MARKERS[1]]
    return "\n".join(lines)


async def main(arguments: argparse.Namespace) -> None:
    # The database URLs `sightline up` wrote for this data directory, under the real environment.
    stack = StackSettings.from_env()
    for key, value in read_env_file(stack.data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    admin_settings = AdminDatabaseSettings.from_env()
    database = DatabaseSettings.from_env("query")
    postmaster_pid = int((stack.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    load_before = os.getloadavg()
    results = []
    for events in arguments.sizes:
        log(f"day of {events:,} events ...")
        results.append(
            await bench_size(admin_settings, database, postmaster_pid, events, arguments.batch, arguments.rounds)
        )
    load_after = os.getloadavg()
    loads = f"before {tuple(round(x, 2) for x in load_before)}, after {tuple(round(x, 2) for x in load_after)}"
    report = markdown(results, arguments.batch, arguments.rounds, arguments.command, loads)
    log(report)
    if arguments.write:
        write_section(report, MARKERS)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000, 320_000], help="events per day")
    parser.add_argument("--batch", type=int, default=500, help="events per merged batch")
    parser.add_argument("--rounds", type=int, default=3, help="merged batches per size")
    parser.add_argument("--command", default="make bench-rollups", help="the command line, for the report")
    parser.add_argument("--write", action="store_true", help="write the figures to docs/benchmarks.md")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
