"""The rollup refresher's own Postgres CPU while something else loads the stack (issue #15).

Runs the refresher's loop (services/query/tasks.py: `refresh_rollups`, then the pause
`pause_after_round` gives, at the query settings' defaults or their SIGHTLINE_QUERY_* values)
for --duration seconds against the stack `sightline up` started with the same environment, on
a connection of its own straight to Postgres (the admin URL, not PgBouncer), so exactly one
backend does its work. Its CPU is that backend's utime + stime from /proc, read before and
after every round (the backend's pid is asked each round, and every backend the pool hands out
is noted: one that replaced it during the round, as the pool does with a connection past its
recycle time, is counted from its start). Start the stack with the query service's refresher off
(`SIGHTLINE_QUERY_ROLLUP_INTERVAL_S=0`), so this loop is the only one, then run the load next
to it (`sightline load ...`). Nothing is asserted; the figures are printed (and appended to
--out as JSON lines, one per round, then the summary). With --by-statement, each statement's
backend CPU (the same /proc reading before and after it) is summed by the statement's text and
the costliest are printed with the summary: where a round's CPU goes. Each round's CPU in this
process (`process_cpu_s`: the refresher's Python side, as a query worker spends it, with the
driver's; --by-statement adds its two /proc reads per statement) is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection

from services.cli.stack import read_env_file
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, StackSettings
from services.query.settings import QuerySettings
from services.query.tasks import RoundOutcome, pause_after_round, refresh_round, rollup_engine

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class StatementCpu:
    """Backend CPU and wall time per statement text, read around every statement the engine runs."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}  # statement -> [cpu_s, wall_s, calls]
        self._started: tuple[int, float, float] | None = None

    def attach(self, engine: object) -> None:
        sync_engine = engine.sync_engine  # type: ignore[attr-defined]
        event.listen(sync_engine, "before_cursor_execute", self._before)
        event.listen(sync_engine, "after_cursor_execute", self._after)

    def _before(self, connection: Connection, cursor: object, statement: str, *args: object) -> None:
        pid = connection.connection.driver_connection.get_server_pid()  # type: ignore[union-attr]
        self._started = (pid, process_cpu_s(pid), time.monotonic())

    def _after(self, connection: Connection, cursor: object, statement: str, *args: object) -> None:
        if self._started is None:
            return
        pid, cpu, wall = self._started
        entry = self.totals.setdefault(" ".join(statement.split()), [0.0, 0.0, 0])
        entry[0] += process_cpu_s(pid) - cpu
        entry[1] += time.monotonic() - wall
        entry[2] += 1
        self._started = None

    def top(self, count: int = 25) -> list[dict[str, object]]:
        ranked = sorted(self.totals.items(), key=lambda item: -item[1][0])[:count]
        return [
            {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "calls": int(calls), "statement": statement[:160]}
            for statement, (cpu, wall, calls) in ranked
        ]


class Backends:
    """The server pid of every connection the engine hands out, in order: the pool replaces a
    connection older than its recycle time (300 s) at checkout, so a round may run on a backend
    that started after the one asked before it."""

    def __init__(self, engine: object) -> None:
        self.pids: list[int] = []
        pool = engine.sync_engine.pool  # type: ignore[attr-defined]
        event.listen(pool, "checkout", self._checkout)

    def _checkout(self, dbapi_connection: Any, record: object, proxy: object) -> None:
        self.pids.append(dbapi_connection.driver_connection.get_server_pid())

    def cpu_since(self, mark: int, pid: int, cpu_before: float) -> float:
        """The CPU of the backends checked out since `mark` (self.pids' length then): pid's own
        from cpu_before, a new backend's from its start; one gone (closed by the pool when
        replaced, before the round used it) counts nothing."""
        cpu = 0.0
        for backend in dict.fromkeys([pid, *self.pids[mark:]]):
            try:
                now = process_cpu_s(backend)
            except FileNotFoundError:
                continue
            cpu += now - cpu_before if backend == pid else now
        return cpu


def log(message: str) -> None:
    print(message, flush=True)


async def main(arguments: argparse.Namespace) -> None:
    stack = StackSettings.from_env()
    for key, value in read_env_file(stack.data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    admin = AdminDatabaseSettings.from_env()
    database = replace(DatabaseSettings.from_env("query"), url=admin.url)
    # The stack runs its own refresher off (SIGHTLINE_QUERY_ROLLUP_INTERVAL_S=0), which this loop
    # must not inherit: its interval is --interval (the default's 30 s).
    settings = replace(QuerySettings.from_env(), rollup_interval_s=arguments.interval)
    engine = rollup_engine(database)
    statements = StatementCpu() if arguments.by_statement else None
    if statements:
        statements.attach(engine)
    backends = Backends(engine)
    out = open(arguments.out, "a") if arguments.out else None  # noqa: SIM115
    started = time.monotonic()
    load_before = os.getloadavg()
    total_cpu, total_process_cpu, busy, rounds, refreshed = 0.0, 0.0, 0.0, 0, 0
    try:
        while time.monotonic() - started < arguments.duration:
            async with engine.connect() as connection:
                pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                pending = (
                    await connection.execute(
                        text("SELECT coalesce(sum(cardinality(event_uuid)), 0) FROM query_rollup_pending")
                    )
                ).scalar_one()
                await connection.rollback()
            cpu_before, round_started, mark = process_cpu_s(pid), time.monotonic(), len(backends.pids)
            process_before = time.process_time()
            try:
                outcome = await refresh_round(engine, settings.rollup_days_per_round)
            except Exception as error:  # noqa: BLE001 - as run_refresher: a failed round is retried next round
                log(f"round failed: {error!r}"[:300])
                outcome = RoundOutcome(0, time.monotonic() - round_started)
            done = outcome.refreshed
            round_s = time.monotonic() - round_started
            cpu = backends.cpu_since(mark, pid, cpu_before)
            process_cpu = time.process_time() - process_before
            total_cpu, busy, rounds, refreshed = total_cpu + cpu, busy + round_s, rounds + 1, refreshed + done
            total_process_cpu += process_cpu
            record = {
                "at_s": round(round_started - started, 1),
                "pending_events": int(pending),
                "wall_s": round(round_s, 3),
                "backend_cpu_s": round(cpu, 3),
                "process_cpu_s": round(process_cpu, 3),
                "days_weeks_refreshed": done,
                "rebuild_s": round(outcome.rebuild_s, 3),
            }
            log(json.dumps(record))
            if out:
                out.write(json.dumps(record) + "\n")
            pause = pause_after_round(outcome.rebuild_s, settings)
            await asyncio.sleep(max(0.0, min(pause, arguments.duration - (time.monotonic() - started))))
    finally:
        await engine.dispose()
    elapsed = time.monotonic() - started
    drain_cpu, drain_rounds = 0.0, 0
    if arguments.drain:
        # What was still waiting when the time was up, merged now (rounds back to back): the
        # cost of every event the load stored, not only of those merged in time.
        engine = rollup_engine(database)
        if statements:
            statements.attach(engine)
        backends = Backends(engine)
        try:
            while drain_rounds < 20:
                async with engine.connect() as connection:
                    pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                    waiting = (
                        await connection.execute(
                            text("SELECT coalesce(sum(cardinality(event_uuid)), 0) FROM query_rollup_pending")
                        )
                    ).scalar_one()
                    await connection.rollback()
                if not waiting and drain_rounds:
                    break
                cpu_before, mark = process_cpu_s(pid), len(backends.pids)
                outcome = await refresh_round(engine, settings.rollup_days_per_round)
                cpu = backends.cpu_since(mark, pid, cpu_before)
                drain_cpu, drain_rounds = drain_cpu + cpu, drain_rounds + 1
                log(
                    json.dumps(
                        {
                            "drain_round": drain_rounds,
                            "pending_events": int(waiting),
                            "backend_cpu_s": cpu,
                            "days_weeks_refreshed": outcome.refreshed,
                            "rebuild_s": round(outcome.rebuild_s, 3),
                        }
                    )
                )
        finally:
            await engine.dispose()
    summary = {
        "duration_s": round(elapsed, 1),
        "rounds": rounds,
        "backend_cpu_s": round(total_cpu, 2),
        "cpu_share_of_one_core": round(total_cpu / elapsed, 4),
        "cpu_s_per_minute": round(60 * total_cpu / elapsed, 2),
        "process_cpu_s": round(total_process_cpu, 2),
        "process_cpu_share_of_one_core": round(total_process_cpu / elapsed, 4),
        "busy_wall_s": round(busy, 1),
        "drain_rounds": drain_rounds,
        "drain_cpu_s": round(drain_cpu, 2),
        "cpu_share_of_one_core_with_drain": round((total_cpu + drain_cpu) / elapsed, 4) if elapsed else None,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    log(json.dumps(summary))
    if statements:
        for row in statements.top():
            log(json.dumps(row))
    if out:
        out.write(json.dumps(summary) + "\n")
        out.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds to run the refresher for")
    parser.add_argument(
        "--interval", type=float, default=QuerySettings().rollup_interval_s, help="seconds between rounds"
    )
    parser.add_argument("--drain", action="store_true", help="then merge what is still waiting, CPU counted apart")
    parser.add_argument("--by-statement", action="store_true", help="also sum the backend CPU by statement")
    parser.add_argument("--out", default=None, help="append each round and the summary here (JSON lines)")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
