"""The sessions triggers on events (alembic 0710) per INSERT statement: time and worker memory.

Starts its own throwaway stack (plain Postgres, or with --citus-workers N a Citus coordinator and
N workers, 4 shards per table), migrated to head, and inserts one statement per --sizes entry
(sessions of 1-5 events, each statement a day of its own). For each statement it prints the
wall time and the peak private memory (RssAnon) of the database backends that ran it: on Citus
the worker backends, where the trigger runs on each shard. --functions 0680 first puts back the
per-session functions of migration 0680, to compare. --contexts logs the memory contexts of a
backend once it passes 600 MB (pg_log_backend_memory_contexts) and prints the largest.
With --explain (plain Postgres): EXPLAIN ANALYZE's trigger time per 8- and 200-event statement
into stored sessions, with the current functions and with the trigger disabled.

    python -m tools.bench.session_triggers [--citus-workers 2] [--sizes 200 2000 20000]
        [--functions 0680] [--contexts] [--explain]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.cli.postgres import LocalPostgres
from services.cli.throwaway import ThrowawayDatabase, throwaway_database
from services.common.db import create_admin_engine
from services.common.partition_repository import ensure_event_partitions

ROOT = Path(__file__).resolve().parents[2]
FIRST_DAY = date(2026, 11, 20)
CONTEXTS_AT_KB = 600 * 1024

# One statement: :sessions sessions of 1-5 events, 30 s apart, started within a day.
_INSERT_SESSIONS = """
WITH s AS (SELECT n, CAST(:start AS timestamptz) + (n % 80000) * interval '1 second' AS t0,
                  1 + floor(random() * 5)::int AS length FROM generate_series(1, CAST(:sessions AS int)) n)
INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path,
                    referrer_domain, country, browser, os, device_type, is_bot)
SELECT CAST(:project_id AS bigint), s.t0 + e.step * interval '30 seconds', gen_random_uuid(),
       CASE WHEN e.step > 0 AND random() < 0.1 THEN 'signup' ELSE 'pageview' END,
       'v-' || (s.n % 5000), CAST(:key AS text) || '-' || s.n, 'https://example.com/p' || e.step, 'example.com',
       '/p' || e.step, CASE WHEN e.step = 0 THEN 'google.com' END, 'DE', 'Chrome', 'Linux', 'desktop',
       random() < 0.03
FROM s CROSS JOIN LATERAL generate_series(0, s.length - 1) e(step)
"""

# --explain: given events of given sessions, one statement.
_INSERT_EVENTS = """
INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path, country,
                    is_bot)
SELECT CAST(:project_id AS bigint), t, gen_random_uuid(), 'pageview', 'v-' || s, 's-' || s,
       'https://example.com/x', 'example.com', '/x', 'DE', false
FROM unnest(CAST(:sessions AS int[]), CAST(:times AS timestamptz[])) AS u(s, t)
"""


def migration_statements(file_name: str) -> list[str]:
    """The SQL a migration's upgrade() runs (its functions), without Alembic."""
    spec = importlib.util.spec_from_file_location(file_name, ROOT / "alembic" / "versions" / file_name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    statements: list[str] = []

    class Recorder:
        def execute(self, sql: str) -> None:
            statements.append(sql)

    module.op = Recorder()  # type: ignore[attr-defined]
    module.upgrade()
    return statements


def private_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def backends_of(postmaster: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        found.append(int(entry))
            except OSError:
                continue
    return found


class PeakMemory:
    """Samples the backends of some clusters every 20 ms while a statement runs."""

    def __init__(self, clusters: list[LocalPostgres], log_contexts: bool) -> None:
        self.clusters = [(cluster, cluster.pid() or 0) for cluster in clusters]
        self.log_contexts = log_contexts
        self.logged: set[int] = set()
        self.peak: dict[int, int] = {}
        self.before: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def __enter__(self) -> PeakMemory:
        self.before = {pid: private_kb(pid) for _, postmaster in self.clusters for pid in backends_of(postmaster)}
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for cluster, postmaster in self.clusters:
                for pid in backends_of(postmaster):
                    self.peak[pid] = max(self.peak.get(pid, 0), private_kb(pid))
                    if self.log_contexts and self.peak[pid] > CONTEXTS_AT_KB and pid not in self.logged:
                        self.logged.add(pid)
                        cluster.psql(f"SELECT pg_log_backend_memory_contexts({pid})", database="sightline")
            time.sleep(0.02)

    def largest_growth_mb(self) -> tuple[float, float]:
        pid, peak = max(self.peak.items(), key=lambda item: item[1] - self.before.get(item[0], 0))
        return round(peak / 1024, 1), round((peak - self.before.get(pid, 0)) / 1024, 1)


async def insert_statements(
    db: ThrowawayDatabase, engine: AsyncEngine, project_id: int, sizes: list[int], log_contexts: bool
) -> list[dict[str, Any]]:
    clusters = db.citus.workers if db.citus else [db.postgres]
    figures = []
    for index, events in enumerate(sizes):
        day = FIRST_DAY - timedelta(days=index)
        with PeakMemory(clusters, log_contexts) as memory:
            started = time.monotonic()
            async with engine.begin() as connection:
                result = await connection.execute(
                    text(_INSERT_SESSIONS),
                    {
                        "start": datetime(day.year, day.month, day.day, 1, tzinfo=UTC),
                        "sessions": max(1, events // 3),
                        "project_id": project_id,
                        "key": f"d{index}",
                    },
                )
            seconds = time.monotonic() - started
        peak_mb, growth_mb = memory.largest_growth_mb()
        figures.append(
            {"events": result.rowcount, "seconds": round(seconds, 3), "peak_mb": peak_mb, "growth_mb": growth_mb}
        )
        print(
            f"{result.rowcount:>7,} events in one INSERT: {seconds:7.3f} s,"
            f" largest backend {peak_mb:,.1f} MB private ({growth_mb:+,.1f} MB in the statement)",
            flush=True,
        )
    return figures


def largest_contexts(log_dir: Path) -> None:
    lines = [line for log in sorted(log_dir.glob("*.log")) for line in log.open(errors="replace") if "level:" in line]
    sizes = []
    for line in lines:
        match = re.search(r"level: \d+; ([^:]+): (\d+) total[^:]*(?:: (.{0,60}))?", line)
        if match:
            sizes.append((int(match.group(2)), match.group(1), (match.group(3) or "").strip()))
    for size, name, ident in sorted(sizes, reverse=True)[:6]:
        print(f"  {size / 1048576:9.1f} MB  {name}  {ident}")


async def explain_costs(engine: AsyncEngine, project_id: int) -> None:
    base = datetime(2026, 11, 20, 8, tzinfo=UTC)
    stored = 20_000
    async with engine.begin() as connection:
        for chunk in range(6):  # 20k sessions of 3 events
            sessions = list(range(chunk * stored // 6, (chunk + 1) * stored // 6)) * 3
            times = [base + timedelta(seconds=n % 3000) for n in range(len(sessions))]
            await connection.execute(
                text(_INSERT_EVENTS), {"project_id": project_id, "sessions": sessions, "times": times}
            )
        await connection.execute(text("ANALYZE"))
    generator = random.Random(1)
    # Interleaved rounds, so the machine's other work weighs on every variant alike.
    variants = {
        "0710 (head)": migration_statements("20261130_0710_query_sessions_triggers_per_shard.py"),
        "0680": migration_statements("20261130_0680_query_sessions_triggers_for_citus.py"),
        "no trigger": [],
    }
    timings: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(4):
        for label, functions in variants.items():
            state = "DISABLE" if label == "no trigger" else "ENABLE"
            async with engine.begin() as connection:
                for sql in functions:
                    await connection.execute(text(sql))
                await connection.execute(text(f"ALTER TABLE events {state} TRIGGER query_sessions_after_insert"))
            for size in (8, 200):
                for run_number in range(12):
                    # A third of the sessions new, the others already stored.
                    picked = [
                        generator.randrange(stored)
                        if generator.random() < 0.67
                        else stored + generator.randrange(10**7)
                        for _ in range(size // 3 + 1)
                    ]
                    sessions = [picked[n % len(picked)] for n in range(size)]
                    times = [base + timedelta(seconds=3000 + generator.randrange(600)) for _ in range(size)]
                    async with engine.begin() as connection:
                        plan = (
                            await connection.execute(
                                text("EXPLAIN (ANALYZE, FORMAT JSON) " + _INSERT_EVENTS),
                                {"project_id": project_id, "sessions": sessions, "times": times},
                            )
                        ).scalar_one()
                    if run_number < 2:
                        continue  # warm-up after the functions changed
                    top = (plan if isinstance(plan, list) else json.loads(plan))[0]
                    timings.setdefault((label, size), []).append(
                        (
                            sum(float(t["Time"]) for t in top.get("Triggers", [])),
                            float(top["Planning Time"]) + float(top["Execution Time"]),
                        )
                    )
    async with engine.begin() as connection:
        for sql in variants["0710 (head)"]:
            await connection.execute(text(sql))
        await connection.execute(text("ALTER TABLE events ENABLE TRIGGER query_sessions_after_insert"))
    for (label, size), samples in timings.items():
        print(
            f"{label:>12}, {size:>3}-event statements: trigger {statistics.median(t for t, _ in samples):.3f} ms,"
            f" whole statement {statistics.median(w for _, w in samples):.3f} ms (medians of {len(samples)})",
            flush=True,
        )


async def run(db: ThrowawayDatabase, arguments: argparse.Namespace) -> None:
    if arguments.functions == "0680":
        for sql in migration_statements("20261130_0680_query_sessions_triggers_for_citus.py"):
            db.postgres.psql(sql, database="sightline")
        print("(migration 0680's per-session functions put back)")
    engine = create_admin_engine(db.admin)
    try:
        project = await admin.create_project(db.admin, name="bench", domains=["example.com"], timezone="Europe/Berlin")
        async with engine.begin() as connection:
            await ensure_event_partitions(connection, FIRST_DAY - timedelta(days=len(arguments.sizes) + 1), FIRST_DAY)
        await insert_statements(db, engine, int(str(project["id"])), arguments.sizes, arguments.contexts)
        if arguments.explain:
            await explain_costs(engine, int(str(project["id"])))
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--citus-workers", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2_000, 20_000], help="events per statement")
    parser.add_argument("--functions", choices=["head", "0680"], default="head")
    parser.add_argument("--contexts", action="store_true", help="log and print the memory contexts above 600 MB")
    parser.add_argument("--explain", action="store_true", help="then the trigger's time per 8/200 events")
    arguments = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="sightline-bench-triggers-", dir="/tmp"))
    root.chmod(0o755)
    try:
        with throwaway_database(
            root,
            server_settings={"shared_buffers": "128MB", "fsync": "off", "jit": "off"},
            citus_workers=arguments.citus_workers,
            citus_shard_count=4,
        ) as db:
            asyncio.run(run(db, arguments))
            if arguments.contexts:
                largest_contexts(root / "log")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
