"""One refresh's merge replayed on stored events and rolled back: its backend CPU by statement.

Takes --seconds of a project's stored non-bot events (the project with the most events in the
last day unless --project-id), ending --before-end seconds before its latest one, writes their
keys as one pending row inside a transaction, runs `rollup_repository.refresh_project` on it
(rebuilding no day), reads each statement's backend CPU from /proc as
`tools.bench.refresher_cpu --by-statement` does, and rolls everything back: the stack is left
as it was. Each replay merges the same events, so two versions of the merge compare on equal
work without a load beside them (under `sightline load` the rounds differ in size from run to
run, and bulk rules or a new local day turn some into rebuilds). The events were merged once
already: their sessions are folded and their session days exist, as they mostly are for a
round under live ingest, so the statements do a live round's work, but what they write
counts the events twice (hence the rollback). Run it against a stack `sightline up` started,
with its refresher off and no load running. Nothing is asserted; the figures are printed as
JSON lines (one per replay, then the costliest statements of the last one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.cli.stack import read_env_file
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, StackSettings
from services.query import rollup_repository
from services.query.tasks import rollup_engine
from tools.bench.refresher_cpu import StatementCpu, process_cpu_s

_BUSIEST = (
    "SELECT e.project_id, max(e.occurred_at) FROM events e WHERE e.occurred_at > now() - interval '1 day'"
    " GROUP BY e.project_id ORDER BY count(*) DESC LIMIT 1"
)
_LATEST = "SELECT e.project_id, max(e.occurred_at) FROM events e WHERE e.project_id = :project_id GROUP BY 1"
_PENDING = (
    "INSERT INTO query_rollup_pending (project_id, occurred_at, event_uuid, days)"
    " SELECT :project_id, array_agg(e.occurred_at ORDER BY e.occurred_at),"
    " array_agg(e.event_uuid ORDER BY e.occurred_at),"
    " array_agg(DISTINCT (e.occurred_at AT TIME ZONE :timezone)::date) FROM events e"
    " WHERE e.project_id = :project_id AND e.occurred_at >= :start AND e.occurred_at < :end AND NOT e.is_bot"
    " HAVING count(*) > 0 RETURNING cardinality(event_uuid)"
)


def stack_rollup_engine() -> AsyncEngine:
    """The refresher's engine (no statement cache: a generic plan would not hash the merge's key
    array) on the admin URL of the stack `sightline up` started (its env file)."""
    stack = StackSettings.from_env()
    for key, value in read_env_file(stack.data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    admin = AdminDatabaseSettings.from_env()
    return rollup_engine(replace(DatabaseSettings.from_env("query"), url=admin.url))


def add_window_arguments(parser: argparse.ArgumentParser, before_end: float) -> None:
    """--project-id, --seconds and --before-end: the window of stored events replayed."""
    parser.add_argument("--project-id", type=int, default=None, help="default: most events in the last day")
    parser.add_argument("--seconds", type=float, default=35.0, help="the window's length (a round's worth)")
    parser.add_argument(
        "--before-end", type=float, default=before_end, help="the window ends this long before the latest"
    )


async def find_window(connection: AsyncConnection, arguments: argparse.Namespace) -> dict[str, Any]:
    """The window the arguments name: project_id, its timezone, start and end."""
    if arguments.project_id is None:
        found = (await connection.execute(text(_BUSIEST))).one()
    else:
        found = (await connection.execute(text(_LATEST), {"project_id": arguments.project_id})).one()
    project_id, latest = int(found[0]), found[1]
    timezone = (
        await connection.execute(
            text("SELECT timezone FROM projects WHERE project_id = :project_id"), {"project_id": project_id}
        )
    ).scalar_one()
    end = latest - timedelta(seconds=arguments.before_end)
    return {
        "project_id": project_id,
        "timezone": timezone,
        "start": end - timedelta(seconds=arguments.seconds),
        "end": end,
    }


async def main(arguments: argparse.Namespace) -> None:
    engine = stack_rollup_engine()
    statements = StatementCpu()
    statements.attach(engine)
    try:
        async with engine.connect() as connection:
            window = await find_window(connection, arguments)
            project_id, timezone = window["project_id"], window["timezone"]
            await connection.rollback()
            for replay in range(arguments.repeat):
                async with connection.begin() as transaction:
                    events = int((await connection.execute(text(_PENDING), window)).scalar_one())
                    raw = await connection.get_raw_connection()
                    pid = raw.driver_connection.get_server_pid()  # type: ignore[union-attr]
                    statements.totals.clear()
                    cpu = process_cpu_s(pid)
                    outcome = await rollup_repository.refresh_project(
                        connection, rollup_repository.ProjectToRefresh(project_id, timezone), 0
                    )
                    cpu = process_cpu_s(pid) - cpu
                    await transaction.rollback()
                print(
                    json.dumps(
                        {
                            "replay": replay + 1,
                            "project_id": project_id,
                            "window": [window["start"].isoformat(), window["end"].isoformat()],
                            "events": events,
                            "outcome": None if outcome is None else asdict(outcome),
                            "backend_cpu_s": round(cpu, 2),
                            "us_per_event": round(cpu / events * 1e6, 2),
                            "load": os.getloadavg(),
                        }
                    ),
                    flush=True,
                )
            for row in statements.top(arguments.top):
                print(json.dumps(row), flush=True)
    finally:
        await engine.dispose()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_window_arguments(parser, before_end=120.0)
    parser.add_argument("--repeat", type=int, default=3, help="replays, one after the other")
    parser.add_argument("--top", type=int, default=20, help="statements listed (of the last replay)")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
