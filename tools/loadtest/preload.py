"""A project that already holds data for `sightline load --project-file` (issue 18 item 3).

Item 3 asks for the ingest p95 "on a project that already holds a day of that load". A day of the
seed load (5000 visitors, an events batch of 8 every 10 s) is ~350 million events, beyond a
small machine's disk, so this loads the largest stand-in the machine allows: --events events
(and their sessions, built by the sessions trigger) into TODAY's UTC partition, from midnight
UTC to now, for the load's project and, with --probe-events, for the probe's project too.
Loading happens inside Postgres (tools/bench/query.py's generate_series statement), in
statements of --per-statement events each on a fresh connection, with progress.

The two projects' keys go to --project-file (mode 0600): `sightline load --project-file` then
sends the load and the probe as these projects instead of fresh ones, and compares the rows
stored during the run (after minus before) with what was acknowledged.

    python -m tools.loadtest.preload --events 5000000 --probe-events 500000 \
        --project-file /tmp/<name>-projects.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from services.cli import admin
from services.cli.stack import load_local_env
from services.common.partition_repository import ensure_event_partitions
from services.common.settings import AdminDatabaseSettings
from tools.bench.query import LOAD_DAY_SQL, admin_engine

DOMAINS = ["example.com", "localhost", "127.0.0.1"]
MEAN_SESSION_LENGTH = 3.5  # LOAD_DAY_SQL's 1 + floor(exponential with mean 3), measured: ~3.5 events


def statement_sessions(total_events: int, per_statement: int) -> list[int]:
    """Sessions per loading statement: about per_statement events each, total_events in all."""
    sessions = max(1, round(total_events / MEAN_SESSION_LENGTH))
    per = max(1, round(per_statement / MEAN_SESSION_LENGTH))
    counts = [per] * (sessions // per)
    if sessions % per:
        counts.append(sessions % per)
    return counts


async def load_today(
    admin_settings: AdminDatabaseSettings, project_id: int, total_events: int, per_statement: int, label: str
) -> int:
    """Insert about total_events events of the project between today's UTC midnight and now; rows loaded."""
    now = datetime.now(UTC)
    day_start = datetime.combine(now.date(), datetime.min.time(), UTC)
    loaded = 0
    started = time.monotonic()
    async with admin_engine(admin_settings) as engine:
        async with engine.begin() as connection:
            await ensure_event_partitions(connection, now.date() - timedelta(days=1), now.date() + timedelta(days=1))
        for number, sessions in enumerate(statement_sessions(total_events, per_statement)):
            async with engine.begin() as connection:
                result = await connection.execute(
                    text(LOAD_DAY_SQL),
                    {
                        "project_id": project_id,
                        "visitor_pool": max(1000, total_events // 8),
                        "day_start": day_start,
                        "day_end": now,
                        "sessions": sessions,
                        # Session ids unique per statement: "<day>s<statement>-<n>".
                        "day_key": f"{now:%Y%m%d}s{number}",
                    },
                )
                loaded += result.rowcount
            # A fresh connection per statement: the sessions trigger's plans are cached per
            # connection, and one planned while query_sessions was empty stays bad (tools/bench/query.py).
            await engine.dispose()
            elapsed = time.monotonic() - started
            print(f"  {label}: {loaded:,} events, {loaded / elapsed:,.0f} events/s", flush=True)
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(f"ANALYZE events_p{now:%Y%m%d}"))
    return loaded


async def create(name: str) -> dict[str, Any]:
    project = await admin.create_project(AdminDatabaseSettings.from_env(), name=name, domains=DOMAINS, timezone="UTC")
    return dict(project)


async def main(arguments: argparse.Namespace) -> None:
    load_local_env()  # the database URLs `sightline up` wrote for this data directory
    admin_settings = AdminDatabaseSettings.from_env()
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
    projects = {
        "load": await create(f"load test preloaded {stamp}"),
        "probe": await create(f"load probe preloaded {stamp}"),
    }
    # The keys first: a long load interrupted still leaves a usable project file.
    # Owner-only before the secret keys are written, not after.
    arguments.project_file.touch(mode=0o600)
    arguments.project_file.chmod(0o600)
    arguments.project_file.write_text(json.dumps(projects, indent=2))
    loaded = {"load": 0, "probe": 0}
    for role, count in (("load", arguments.events), ("probe", arguments.probe_events)):
        if count > 0:
            loaded[role] = await load_today(
                admin_settings, int(projects[role]["id"]), count, arguments.per_statement, role
            )
    print(json.dumps({role: {"project_id": projects[role]["id"], "events": loaded[role]} for role in projects}))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="events for the load's project (today)")
    parser.add_argument("--probe-events", type=int, default=500_000, help="events for the probe's project (today)")
    parser.add_argument("--per-statement", type=int, default=500_000, help="events per loading statement")
    parser.add_argument("--project-file", type=Path, required=True, help="where the two projects' keys go (0600)")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
