"""What wal_compression costs the writer's statement right after a checkpoint.

After a checkpoint, the first change to each page writes the whole page to the WAL (a
full-page image), compressed by `wal_compression`. On one direct connection, for each setting
in turn (pglz, the stack's "on" before; lz4; pglz; lz4; off): set it (ALTER SYSTEM, reload),
warm up with 20 batches, CHECKPOINT, then run 200 batches of the ingest writer's statement (8
requests of 8 events each, as `tools.bench.ingest_postgres`) and read that backend's CPU from
/proc, the WAL written and the full-page images (`pg_stat_wal`). The setting is reset at the end.

ALTER SYSTEM and CHECKPOINT need a superuser: they run through `psql` as the postgres service
account on the cluster's unix socket, so Postgres must run on this machine (`sightline up`). Like
`ingest_postgres`, it takes only a throwaway database whose name ends in `_scratch`:

    flock /work/bench.lock .venv/bin/python -m tools.bench.ingest_wal_compression \\
        --database-url postgresql://sightline:...@127.0.0.1:PORT/sightline_scratch \\
        --socket-dir $SIGHTLINE_DATA_DIR/run
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import uuid
from urllib.parse import urlsplit

import asyncpg

from services.cli.processes import as_service_account
from tools.bench.ingest_postgres import EVENTS_PER_REQUEST, PROJECT_ID, WARM_UP_BATCHES, request_rows, statement
from tools.bench.proc_cpu import load_average, read_tree

SETTINGS = ("pglz", "lz4", "pglz", "lz4", "off")


def as_superuser(socket_dir: str, port: int, database: str, sql: str) -> None:
    command = ["psql", "-q", "-h", socket_dir, "-p", str(port), "-d", database, "-c", sql]
    subprocess.run(as_service_account(command), check=True, capture_output=True)


async def full_page_images(connection: asyncpg.Connection) -> int:
    # A backend reports its WAL counters when idle, at most once a second unless forced.
    await connection.execute("SELECT pg_stat_force_next_flush()")
    return int(await connection.fetchval("SELECT wal_fpi FROM pg_stat_wal"))


async def run(database_url: str, socket_dir: str, batches: int, requests: int) -> str:
    parts = urlsplit(database_url)
    port, database = parts.port or 5432, parts.path.lstrip("/")
    connection = await asyncpg.connect(database_url)
    lines = [
        f"load average {load_average()} at start; {batches} batches of {requests} requests per setting",
        "",
        "| wal_compression | backend CPU ms per 8-event request | WAL bytes per request | full-page images per batch |",
        "| --- | --- | --- | --- |",
    ]
    try:
        await connection.execute(
            "INSERT INTO projects (project_id, name, public_key, secret_key_hash)"
            " VALUES ($1, 'ingest_postgres bench', 'pk_ingest_postgres_bench', 'not a hash') ON CONFLICT DO NOTHING",
            PROJECT_ID,
        )
        backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
        for setting in SETTINGS:
            as_superuser(socket_dir, port, database, f"ALTER SYSTEM SET wal_compression = '{setting}'")
            as_superuser(socket_dir, port, database, "SELECT pg_reload_conf()")
            await asyncio.sleep(0.5)
            prefix = uuid.uuid4().hex[:8]
            statements = [
                statement(request_rows(requests, f"{prefix}-{batch % 8}", uuids=True))
                for batch in range(batches + WARM_UP_BATCHES)
            ]
            for sql in statements[:WARM_UP_BATCHES]:
                await connection.execute(sql)
            as_superuser(socket_dir, port, database, "CHECKPOINT")
            shown = await connection.fetchval("SHOW wal_compression")
            images_before = await full_page_images(connection)
            wal_before = await connection.fetchval("SELECT pg_current_wal_lsn()")
            cpu_before = read_tree(backend).own
            for sql in statements[WARM_UP_BATCHES:]:
                await connection.execute(sql)
            cpu_after = read_tree(backend).own
            wal = float(await connection.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before))
            images = await full_page_images(connection) - images_before
            stored_requests = batches * requests
            lines.append(
                f"| {shown} | {(cpu_after - cpu_before) * 1000 / stored_requests:.3f} | {wal / stored_requests:.0f} |"
                f" {images / batches:.1f} |"
            )
            print(lines[-1], flush=True)
    finally:
        as_superuser(socket_dir, port, database, "ALTER SYSTEM RESET wal_compression")
        as_superuser(socket_dir, port, database, "SELECT pg_reload_conf()")
        await connection.close()
    lines += ["", f"load average {load_average()} at end"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="postgresql://owner:password@host:port/<name>_scratch")
    parser.add_argument("--socket-dir", required=True, help="the cluster's unix socket directory ($DATA_DIR/run)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--requests-per-batch", type=int, default=8, help=f"{EVENTS_PER_REQUEST} events each")
    args = parser.parse_args()
    if not urlsplit(args.database_url).path.endswith("_scratch"):
        raise SystemExit("this checkpoints and changes wal_compression while it runs: give it a *_scratch database")
    print(asyncio.run(run(args.database_url, args.socket_dir, args.batches, args.requests_per_batch)))


if __name__ == "__main__":
    main()
