"""Postgres's share of a stored event: the writer's statement, with its trigger and indexes on and off.

Runs the ingest writer's own statement (services/ingest/repository.py) on one direct connection,
batch after batch, and reads that backend's CPU time from /proc and the WAL it wrote, per 8-event
request: with everything on (each session sending the same URLs again, then every URL new to
its session: what an event_session_urls row costs), in turns with the sessions indexed by their
end as before migration 1180 (no heap-only update of a session), without client uuids (no ingested_events
row), with the pending trigger disabled, then also the sessions trigger, then also without the
trigram index on the sessions' URLs, the distinct_id index and the funnel sample index. What
each step saves is that object's cost.

It changes the schema while it runs (ALTER TABLE ... DISABLE TRIGGER, DROP INDEX) and puts it
back at the end, so it refuses any database but a throwaway one whose name ends in `_scratch`,
migrated to head beforehand, for example (on the stack `make up` started, as the owner):

    createdb -T template0 -O sightline sightline_scratch      # as the postgres user
    SIGHTLINE_ADMIN_DATABASE_URL=postgresql+asyncpg://sightline:...@127.0.0.1:PORT/sightline_scratch \\
        .venv/bin/sightline migrate
    flock /work/bench.lock .venv/bin/python -m tools.bench.ingest_postgres \\
        --database-url postgresql://sightline:...@127.0.0.1:PORT/sightline_scratch

Postgres must run on this machine (its backend's /proc entry is read).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import msgspec

from services.ingest import repository
from services.ingest.repository import EventRow
from tools.bench.proc_cpu import load_average, read_tree

EVENTS_PER_REQUEST = 8
WARM_UP_BATCHES = 20
PROJECT_ID = 1


@dataclass(frozen=True)
class Variant:
    name: str
    uuids: bool
    before: tuple[str, ...] = ()
    # Every event's URL new to its session (so each adds an event_session_urls row, migration
    # 0840); otherwise each session sends the same 8 URLs again, as a visitor on a few pages does.
    fresh_urls: bool = False
    # The function's statement sent as text, as the writer did before migration 0870: parsed,
    # analysed and planned for every batch.
    planned_per_batch: bool = False


_OLD_ENDED_AT_INDEX = "CREATE INDEX ix_query_sessions_project_id_ended_at ON query_sessions (project_id, ended_at)"
_DROP_OLD_ENDED_AT_INDEX = "DROP INDEX IF EXISTS ix_query_sessions_project_id_ended_at"

# Each step keeps the previous steps' changes; the last one puts everything back.
VARIANTS = (
    # The function and its statement sent as text twice, in turns: the first variant of a run
    # also pays for whatever the machine was doing before.
    Variant("everything on", uuids=True),
    Variant(
        "everything on, the statement sent as text (planned for every batch, as before 0870)",
        uuids=True,
        planned_per_batch=True,
    ),
    Variant("everything on (2)", uuids=True),
    Variant("everything on, the statement sent as text (2)", uuids=True, planned_per_batch=True),
    # Migration 1180: with the sessions indexed by their end again, no update of a session is
    # heap-only (each writes an entry in every index of query_sessions); in turns with the
    # landed schema, where a batch within the session's hour is.
    Variant(
        "the sessions' (project_id, ended_at) index as before 1180 (no HOT update)",
        uuids=True,
        before=(_OLD_ENDED_AT_INDEX,),
    ),
    Variant("everything on (3)", uuids=True, before=(_DROP_OLD_ENDED_AT_INDEX,)),
    Variant(
        "the sessions' (project_id, ended_at) index as before 1180 (2)",
        uuids=True,
        before=(_OLD_ENDED_AT_INDEX,),
    ),
    Variant("everything on (4)", uuids=True, before=(_DROP_OLD_ENDED_AT_INDEX,)),
    Variant("everything on, every event's URL new to its session", uuids=True, fresh_urls=True),
    Variant("everything on, events without uuids (no ingested_events row)", uuids=False),
    Variant(
        "pending trigger (0730, query_rollup_pending row per statement) disabled",
        uuids=True,
        before=("ALTER TABLE events DISABLE TRIGGER query_rollup_pending_after_insert",),
    ),
    Variant(
        "  and the sessions trigger disabled",
        uuids=True,
        before=("ALTER TABLE events DISABLE TRIGGER query_sessions_after_insert",),
    ),
    Variant(
        "  and event_session_urls' trigram index (0840) dropped",
        uuids=True,
        before=("DROP INDEX ix_event_session_urls_url_trgm",),
    ),
    Variant(
        "  and the (project_id, distinct_id) index dropped",
        uuids=True,
        before=("DROP INDEX ix_events_project_id_distinct_id",),
    ),
    Variant(
        "  and the funnel sample index (0780, 1/8 of the visitors) dropped",
        uuids=True,
        before=("DROP INDEX ix_events_funnel_sample",),
    ),
    Variant(
        "everything on again",
        uuids=True,
        before=(
            _DROP_OLD_ENDED_AT_INDEX,
            "CREATE INDEX IF NOT EXISTS ix_events_funnel_sample ON events"
            " (project_id, name, path, (hashtext(distinct_id) & 511), occurred_at) INCLUDE (distinct_id)"
            " WHERE NOT is_bot AND (hashtext(distinct_id) & 7) = 0",
            "CREATE INDEX IF NOT EXISTS ix_events_project_id_distinct_id ON events (project_id, distinct_id)",
            "CREATE INDEX IF NOT EXISTS ix_event_session_urls_url_trgm ON event_session_urls"
            " USING gin (lower(url) gin_trgm_ops)",
            "ALTER TABLE events ENABLE TRIGGER query_sessions_after_insert",
            "ALTER TABLE events ENABLE TRIGGER query_rollup_pending_after_insert",
        ),
    ),
)


def request_rows(requests: int, session_prefix: str, uuids: bool, url_tag: str = "") -> list[EventRow]:
    """What the writer stores for `requests` bench-ingest bodies, each its own visitor and session."""
    now = datetime.now(UTC)
    return [
        EventRow(
            project_id=PROJECT_ID,
            occurred_at=now,
            event_uuid=uuid.uuid4() if uuids else None,
            name="pageview" if n % 3 == 0 else "click_cta",
            distinct_id=f"{session_prefix}-visitor-{r}",
            session_id=f"{session_prefix}-session-{r}",
            url=f"https://example.com/docs/getting-started/section-{n}{url_tag}?utm_source=bench&utm_medium=wrk",
            domain="example.com",
            path=f"/docs/getting-started/section-{n}",
            title="Getting started with Sightline - documentation",
            referrer="https://www.google.com/",
            referrer_domain="google.com",
            utm_source="bench",
            utm_medium="wrk",
            utm_campaign=None,
            utm_term=None,
            utm_content=None,
            browser="Chrome",
            browser_version="120",
            os="Linux",
            os_version=None,
            device_type="desktop",
            country=None,
            is_bot=False,
            properties={"plan": "pro", "position": n, "variant": "b", "label": "Start your free trial"},
        )
        for r in range(requests)
        for n in range(EVENTS_PER_REQUEST)
    ]


def statement(rows: list[EventRow], as_text: bool = False) -> str:
    """The writer's call of ingest_store_events for rows; with as_text, the function's statement
    itself (the repository's _INSERT_EVENTS, which the function runs word for word)."""
    document = repository._dollar_quoted(msgspec.json.encode(rows).decode())
    if as_text:
        return repository._INSERT_EVENTS.replace(repository._ROWS, f"CAST({document} AS json)")
    return repository._STORE_EVENTS.replace(repository._ROWS, document)


async def session_updates(connection: asyncpg.Connection) -> tuple[int, int]:
    """query_sessions' updates so far and how many were heap-only, this backend's included: it
    reports its counters when it goes idle after asking for the next report to be forced."""
    await connection.execute("SELECT pg_stat_force_next_flush()")
    row = await connection.fetchrow(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'query_sessions'::regclass"
    )
    assert row is not None
    return int(row[0]), int(row[1])


async def measure(connection: asyncpg.Connection, variant: Variant, batches: int, requests: int) -> str:
    backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
    prefix = uuid.uuid4().hex[:8]
    # A visitor sends a batch every few seconds: each request's session comes back every 8 batches.
    statements = [
        statement(
            request_rows(requests, f"{prefix}-{batch % 8}", variant.uuids, f"-{batch}" if variant.fresh_urls else ""),
            variant.planned_per_batch,
        )
        for batch in range(batches + WARM_UP_BATCHES)
    ]
    for sql in statements[:WARM_UP_BATCHES]:
        await connection.execute(sql)
    updated_before, heap_only_before = await session_updates(connection)
    wal_before = await connection.fetchval("SELECT pg_current_wal_lsn()")
    cpu_before, wall_before = read_tree(backend).own, time.perf_counter()
    for sql in statements[WARM_UP_BATCHES:]:
        await connection.execute(sql)
    cpu_after, wall_after = read_tree(backend).own, time.perf_counter()
    wal = float(await connection.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before))
    updated, heap_only = await session_updates(connection)
    updated, heap_only = updated - updated_before, heap_only - heap_only_before
    stored_requests = batches * requests
    return (
        f"| {variant.name} | {(cpu_after - cpu_before) * 1000 / stored_requests:.3f} | "
        f"{(wall_after - wall_before) * 1000 / stored_requests:.3f} | {wal / stored_requests:.0f} | "
        f"{100 * heap_only / max(updated, 1):.0f} % of {updated} |"
    )


async def run(database_url: str, batches: int, requests: int, variants: int = len(VARIANTS)) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO projects (project_id, name, public_key, secret_key_hash)"
            " VALUES ($1, 'ingest_postgres bench', 'pk_ingest_postgres_bench', 'not a hash') ON CONFLICT DO NOTHING",
            PROJECT_ID,
        )
        lines = [
            f"load average {load_average()} at start; {batches} batches of {requests} requests"
            f" ({requests * EVENTS_PER_REQUEST} events) per variant, one connection, one after another",
            "",
            "| variant | backend CPU ms per 8-event request | wall ms per request | WAL bytes per request"
            " | sessions' updates heap-only |",
            "| --- | --- | --- | --- | --- |",
        ]
        # The first `variants` only (all by default); the schema is put back whatever the count.
        for variant in (*VARIANTS[:variants], *(VARIANTS[-1:] if variants < len(VARIANTS) else ())):
            for ddl in variant.before:
                await connection.execute(ddl)
            lines.append(await measure(connection, variant, batches, requests))
            print(lines[-1], flush=True)
        lines.append("")
        lines.append(f"load average {load_average()} at end")
        return "\n".join(lines)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="postgresql://owner:password@host:port/<name>_scratch")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--requests-per-batch", type=int, default=8, help="8 requests = 64 events per statement")
    parser.add_argument(
        "--variants",
        type=int,
        default=len(VARIANTS),
        help="run only the first N variants (then 'everything on again', which restores the schema)",
    )
    args = parser.parse_args()
    database = urlsplit(args.database_url).path.lstrip("/")
    if not database.endswith("_scratch"):
        raise SystemExit("this drops indexes and disables triggers while it runs: give it a *_scratch database")
    if not Path("/proc/self/stat").exists():
        raise SystemExit("needs Linux /proc, with Postgres on this machine")
    print(asyncio.run(run(args.database_url, args.batches, args.requests_per_batch, args.variants)))


if __name__ == "__main__":
    main()
