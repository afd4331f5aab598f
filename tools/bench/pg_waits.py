"""Where Postgres's backends wait during a run: pg_stat_activity sampled every 100 ms.

Writes one JSON line per sample to --out: the non-idle backends (type, state, wait event type
and name, the first 60 characters of the statement, the transaction's age), and every fifth
sample pg_stat_wal, pg_stat_bgwriter and pg_stat_progress_vacuum. Stops when --stop-file
appears (or after --seconds), then prints, per statement kind, the share of samples with a
backend on CPU or in each wait, and the longest transactions of the ingest writer.

    .venv/bin/python -m tools.bench.pg_waits --database-url postgresql://sightline:...@127.0.0.1:PORT/sightline \\
        --out /tmp/x/samples.jsonl --stop-file /tmp/x/stop &

The URL is the stack's admin URL (SIGHTLINE_ADMIN_DATABASE_URL without "+asyncpg"): the
services' role sees only its own backends. Statements are cut at 60 characters, so no
visitor's data from the writer's literal ends up in the file beyond the function's name.
Docs: docs/benchmarks.md, "p95b".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

_ACTIVITY = """
    SELECT backend_type, state, wait_event_type, wait_event, left(query, 60) AS query,
           extract(epoch FROM clock_timestamp() - xact_start)::float8 AS xact_s
    FROM pg_stat_activity
    WHERE pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle'
"""
_WAL = "SELECT wal_records, wal_fpi, wal_bytes::bigint AS wal_bytes, wal_sync, wal_sync_time FROM pg_stat_wal"
_BGWRITER = "SELECT checkpoints_timed, checkpoints_req, buffers_checkpoint, buffers_backend FROM pg_stat_bgwriter"
_VACUUM = "SELECT relid::regclass::text AS relation, phase FROM pg_stat_progress_vacuum"


def statement_kind(query: str) -> str:
    """A short name for what the backend runs (the writer's functions, or the statement's start)."""
    for name in ("ingest_store_replay_chunks", "ingest_store_events"):
        if name in query:
            return name
    return query[:40]


async def sample(database_url: str, out: Path, stop_file: Path | None, seconds: float, interval_s: float) -> int:
    connection = await asyncpg.connect(database_url)
    count = 0
    deadline = time.monotonic() + seconds
    try:
        with out.open("w") as sink:
            while time.monotonic() < deadline and not (stop_file is not None and stop_file.exists()):
                started = time.monotonic()
                record: dict[str, Any] = {"t": time.time()}
                rows = await connection.fetch(_ACTIVITY)
                record["activity"] = [
                    [r["backend_type"], r["state"], r["wait_event_type"], r["wait_event"], r["query"], r["xact_s"]]
                    for r in rows
                ]
                if count % 5 == 0:
                    record["wal"] = dict(await connection.fetchrow(_WAL) or {})
                    record["bgwriter"] = dict(await connection.fetchrow(_BGWRITER) or {})
                    record["vacuum"] = [[r["relation"], r["phase"]] for r in await connection.fetch(_VACUUM)]
                sink.write(json.dumps(record, default=str) + "\n")
                count += 1
                await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    finally:
        await connection.close()
    return count


def summary(path: Path) -> list[str]:
    """Per statement kind, backends per sample on CPU and in each wait; the writer's longest transactions."""
    samples = 0
    waits: Counter[tuple[str, str]] = Counter()
    longest: list[tuple[float, str]] = []
    for line in path.open():
        record = json.loads(line)
        samples += 1
        for backend_type, state, wait_type, wait_event, query, xact_s in record["activity"]:
            if backend_type != "client backend" or state != "active":
                continue
            kind = statement_kind(query or "")
            waits[(kind, f"{wait_type}:{wait_event}" if wait_type else "CPU")] += 1
            if kind.startswith("ingest_store") and xact_s is not None:
                longest.append((float(xact_s), kind))
    lines = [f"{samples} samples"]
    for (kind, wait), n in waits.most_common(20):
        lines.append(f"{n / max(samples, 1):6.3f} backends per sample  {wait:28} {kind}")
    longest.sort(reverse=True)
    lines.append("longest writer transactions seen (s): " + ", ".join(f"{s:.2f}" for s, _ in longest[:10]))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="the stack's admin URL (postgresql://...)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stop-file", type=Path, help="stop when this file appears")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop after this long at most")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    arguments = parser.parse_args()
    url = arguments.database_url.replace("postgresql+asyncpg://", "postgresql://")
    asyncio.run(sample(url, arguments.out, arguments.stop_file, arguments.seconds, arguments.interval_ms / 1000))
    print("\n".join(summary(arguments.out)))


if __name__ == "__main__":
    main()
