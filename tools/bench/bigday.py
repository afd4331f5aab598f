"""A day too large for one rebuild, built by the refresher: time until usable, longest statement.

On a stack whose query service runs no refresher (SIGHTLINE_QUERY_ROLLUP_INTERVAL_S=0), with a
project preloaded into one day (`python -m tools.loadtest.preload`), this runs the refresher's
loop as `run_refresher` does (services/query/tasks.py: a round, then the pause
`pause_after_round` gives, with the query settings of the environment, the defaults unless set)
until every day of the project is built, and prints each round, the longest statement and the
Postgres CPU. With --lock, the lock file is held (flock) during each round only, not during the
pauses: the rounds are the timing, the pauses idle. Nothing is written but the rollups.

--no-sleep computes each pause (pause_after_round) without sleeping it, holding --lock for the
whole run instead: the pauses are idle time given by the rounds' times, so the time until usable
is the rounds' wall time plus the pauses computed, without hours of waits for the lock between
rounds on a shared machine. --unbuild first marks the project's days never built (as a purge or a bulk load does), for a
second run on the same data; --max-rebuild-events sets rollup_repository.MAX_REBUILD_EVENTS (a
large value: every day rebuilt in one go, as before pieces).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from services.cli.stack import read_env_file
from services.common.db import create_admin_engine
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, StackSettings
from services.query import rollup_repository
from services.query.settings import QuerySettings
from services.query.tasks import RoundOutcome, pause_after_round, refresh_round, rollup_engine
from tools.bench.rollups import postgres_cpu_s


@contextmanager
def held(lock: Path | None, waits: list[float]) -> Iterator[None]:
    """The lock held for the block; how long it was waited for appended to `waits`."""
    if lock is None:
        yield
        return
    with lock.open("a") as handle:
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        waits.append(time.monotonic() - started)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def main(arguments: argparse.Namespace) -> None:
    stack = StackSettings.from_env()
    for key, value in read_env_file(stack.data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    settings = QuerySettings.from_env()
    postmaster_pid = int((stack.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    admin_engine = create_admin_engine(AdminDatabaseSettings.from_env())
    engine = rollup_engine(DatabaseSettings.from_env("query"))
    statements: list[tuple[float, str]] = []
    starts: dict[int, float] = {}

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        starts[id(cursor)] = time.monotonic()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((time.monotonic() - starts.pop(id(cursor), time.monotonic()), " ".join(statement.split())))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    event.listen(engine.sync_engine, "after_cursor_execute", after)
    unbuilt = text(
        "SELECT count(*) FILTER (WHERE built_changes IS DISTINCT FROM changes), coalesce(max(piece_events), 0)"
        " FROM query_rollup_days WHERE project_id = :project_id"
    )
    print(
        f"settings: rollup_interval_s={settings.rollup_interval_s}, rollup_max_busy_share="
        f"{settings.rollup_max_busy_share}, rollup_days_per_round={settings.rollup_days_per_round}",
        flush=True,
    )
    if arguments.max_rebuild_events is not None:
        rollup_repository.MAX_REBUILD_EVENTS = arguments.max_rebuild_events
    print(
        f"MAX_REBUILD_EVENTS={rollup_repository.MAX_REBUILD_EVENTS}, PIECE_EVENTS={rollup_repository.PIECE_EVENTS}",
        flush=True,
    )
    if arguments.unbuild:
        async with admin_engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL, piece_until = NULL,"
                    " piece_until_uuid = NULL, piece_changes = NULL, piece_events = NULL WHERE project_id = :project_id"
                ),
                {"project_id": arguments.project},
            )
    print(f"load average before: {loadavg()}", flush=True)
    cpu_before, started = postgres_cpu_s(postmaster_pid), time.monotonic()
    busy_total = 0.0
    paused = 0.0
    waits: list[float] = []
    whole_run = held(arguments.lock, waits) if arguments.no_sleep else nullcontext()
    round_lock = None if arguments.no_sleep else arguments.lock
    try:
        with whole_run:
            for number in range(1, arguments.max_rounds + 1):
                with held(round_lock, waits):
                    round_started, cpu_round = time.monotonic(), postgres_cpu_s(postmaster_pid)
                    first = len(statements)
                    try:
                        outcome = await refresh_round(engine, settings.rollup_days_per_round)
                    except Exception as exc:  # as run_refresher: logged, spaced out by its whole time
                        failed: str | None = " ".join(str(exc).split())[:160]
                        outcome = RoundOutcome(0, time.monotonic() - round_started)
                    else:
                        failed = None
                    took = time.monotonic() - round_started
                    cpu = postgres_cpu_s(postmaster_pid) - cpu_round
                    longest = max(statements[first:], default=(0.0, ""))
                    async with admin_engine.connect() as connection:
                        left, events = (await connection.execute(unbuilt, {"project_id": arguments.project})).one()
                    load = loadavg()
                busy_total += took
                print(
                    f"round {number} at {time.monotonic() - started:7.1f} s: {took:6.1f} s wall,"
                    f" {cpu:6.1f} s Postgres CPU,"
                    f" refreshed {outcome.refreshed}, busy {outcome.rebuild_s:.1f} s, day events in pieces so far"
                    f" {events:,}, days not built {left}; longest statement {longest[0]:.1f} s ({longest[1][:70]});"
                    f" load {load}" + (f"; FAILED: {failed}" if failed else ""),
                    flush=True,
                )
                if left == 0:
                    break
                pause = pause_after_round(outcome.rebuild_s, settings)
                paused += pause
                if not arguments.no_sleep:
                    await asyncio.sleep(pause)
        total = time.monotonic() - started + (paused if arguments.no_sleep else 0.0)
        cpu_total = postgres_cpu_s(postmaster_pid) - cpu_before
        slowest = sorted(statements, reverse=True)[:5]
        waited = sum(waits)
        print(
            f"usable after {total:.1f} s, {waited:.1f} s of it waiting for the lock: {total - waited:.1f} s without"
            f" ({busy_total:.1f} s in rounds, {paused:.1f} s of pauses"
            f"{' computed, not slept' if arguments.no_sleep else ''}), {cpu_total:.1f} s Postgres CPU",
            flush=True,
        )
        for seconds, statement in slowest:
            print(f"  {seconds:6.2f} s  {statement[:110]}", flush=True)
        print(f"load average after: {loadavg()}", flush=True)
    finally:
        await engine.dispose()
        await admin_engine.dispose()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project", type=int, required=True, help="the preloaded project, for the progress")
    parser.add_argument("--max-rounds", type=int, default=200)
    parser.add_argument("--lock", type=Path, default=None, help="a lock file held during each round")
    parser.add_argument("--no-sleep", action="store_true", help="pauses computed, not slept; --lock held throughout")
    parser.add_argument("--unbuild", action="store_true", help="mark the project's days never built first")
    parser.add_argument("--max-rebuild-events", type=int, default=None, help="rollup_repository.MAX_REBUILD_EVENTS")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
