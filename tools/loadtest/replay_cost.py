"""What one replay chunk costs: ingest's Python steps and the Postgres statement, part by part.

Issue #18's replay half: CPU per ~3 kB replay chunk (the seed's steady chunk, five seconds of
interaction) and per first chunk (meta + full snapshot, 15-60 kB of gzip), both made by the load
test's own generator (tools/loadtest/payloads.py, the seed's bodies: three gzip members, as the
tracker's chunks are sent).

``ingest``: CPU per call of each Python step /v1/replay runs on a body (services/ingest/routes.py
and service.py): inflate, skim, typed decode (with its NUL check), the rrweb summary, the chunk
row and its part of the writer's JSON document (services/ingest/repository.py), timed with
``time.process_time`` over many calls in this process. Then, with ``--ingest-url``, whole
requests sent to a running stack's ingest (`SIGHTLINE_INGEST_BENCHMARK_NOOP=1 sightline up`),
first to /v1/noop then to /v1/replay with the same bodies, each body a chunk of its own
(session, seq), and the CPU of the ingest server's process tree, of Postgres and of PgBouncer
read from /proc around each: what a whole request costs, Granian and Litestar included.

``postgres``: the writer's own statement (``repository.write_batch``) on one direct connection,
batch after batch, and that backend's CPU from /proc and the WAL it wrote, per chunk: steady
chunks to sessions that exist (the session row is updated) and first chunks (a new session),
4 chunks of 4 sessions per statement: what the writer sends, then the statement sent as text
(parsed and planned for every batch, as before migration 0890), then parts taken away one by
one (the session upsert, the chunks' distinct_id index, the stored bytes themselves), then
table settings tried one at a time (bytes kept inline instead of in the TOAST table; room on
the sessions' pages for HOT updates). It changes the schema while it runs
and puts it back, so it refuses any database whose name does not end in ``_scratch``:

    createdb -T template0 -O sightline replaycpu_scratch         # as the postgres user; then
    # CREATE EXTENSION hll; CREATE EXTENSION pg_trgm (as the postgres user), `sightline migrate`
    flock /work/bench.lock .venv/bin/python -m tools.loadtest.replay_cost postgres \\
        --database-url postgresql://sightline:...@127.0.0.1:PORT/replaycpu_scratch
    flock /work/bench.lock .venv/bin/python -m tools.loadtest.replay_cost ingest \\
        --ingest-url http://127.0.0.1:PORT --data-dir /tmp/<stack data dir>

Postgres must run on this machine (its backend's /proc entry is read). Prints Markdown tables;
the figures go to docs/benchmarks.md by hand, with the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from services.ingest import repository
from services.ingest.decoding import decode_json, gunzip_bounded, skim
from services.ingest.repository import ChunkRow
from services.ingest.schemas import ReplayChunkBody
from services.ingest.service import summarise_rrweb
from tools.bench.proc_cpu import load_average, read_tree
from tools.loadtest.payloads import PayloadPools, ReplayMember, VisitorIdentity, build_pools, replay_body

PROJECT_ID = 1
PROJECT_KEY = "pk_replay_cost_bench"
WARM_UP_BATCHES = 10
REPLAY_LIMIT = 32 * 1024 * 1024


# --- bodies ---------------------------------------------------------------------------------


def pools(project_key: str) -> PayloadPools:
    return build_pools(project_key)


def body_for(visitor: VisitorIdentity, seq: int, member: ReplayMember) -> bytes:
    return replay_body(visitor, seq, member)


def chunk_row(body: bytes) -> ChunkRow:
    """What the ingest service makes of a body (services/ingest/service.py, _chunk_row)."""
    inflated = gunzip_bounded(body, REPLAY_LIMIT)
    chunk = decode_json(inflated, ReplayChunkBody, skim(inflated))
    summary = summarise_rrweb(chunk.events)
    return ChunkRow(
        project_id=PROJECT_ID,
        session_id=chunk.session_id,
        seq=chunk.seq,
        first_timestamp=datetime.fromtimestamp(summary.first_ms / 1000, UTC),
        last_timestamp=datetime.fromtimestamp(summary.last_ms / 1000, UTC),
        event_count=len(chunk.events),
        has_full_snapshot=summary.has_full_snapshot,
        content_encoding="gzip",
        data=body,
        distinct_id=chunk.distinct_id,
        click_count=summary.clicks,
        page_count=summary.pages,
        active_ms=summary.active_ms,
        first_url=summary.first_url,
        country="DE",
        browser="Chrome",
        os="Linux",
        device_type="desktop",
    )


# --- ingest ---------------------------------------------------------------------------------


def _cpu_us(call: Callable[[], object], seconds: float = 0.5) -> float:
    calls = 0
    started = time.process_time()
    while True:
        call()
        calls += 1
        spent = time.process_time() - started
        if spent >= seconds:
            return spent / calls * 1e6


def ingest_steps(payloads: PayloadPools) -> list[str]:
    kinds = {
        "steady chunk": [m for m in payloads.incremental_chunks],
        "first chunk": [m for m in payloads.first_chunks],
    }
    lines = [
        "| chunk | gzip bytes (mean) | inflated bytes | inflate us | skim us | typed decode us | summary us "
        "| chunk row + JSON document us | sum us |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, members in kinds.items():
        totals = [0.0] * 5
        gzip_bytes = inflated_bytes = 0
        for member in members:
            visitor = VisitorIdentity(PROJECT_KEY)
            body = body_for(visitor, 1, member)
            inflated = gunzip_bounded(body, REPLAY_LIMIT)
            envelope = skim(inflated)
            chunk = decode_json(inflated, ReplayChunkBody, envelope)
            gzip_bytes += len(body)
            inflated_bytes += len(inflated)
            steps: list[Callable[[], object]] = [
                partial(gunzip_bounded, body, REPLAY_LIMIT),
                partial(skim, inflated),
                partial(decode_json, inflated, ReplayChunkBody, envelope),
                partial(summarise_rrweb, chunk.events),
                partial(lambda b: repository._chunks_json([chunk_row(b)]), body),
            ]
            for index, step in enumerate(steps):
                totals[index] += _cpu_us(step, 0.05)
        # The last step timed chunk_row() itself (inflate + decode + summary again): take those out.
        totals[4] -= totals[0] + totals[1] + totals[2] + totals[3]
        count = len(members)
        means = [t / count for t in totals]
        lines.append(
            f"| {name} | {gzip_bytes // count} | {inflated_bytes // count} | "
            + " | ".join(f"{m:.0f}" for m in means)
            + f" | {sum(means):.0f} |"
        )
    return lines


def _pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stack_cpu(data_dir: Path) -> dict[str, float]:
    roots = {
        "ingest": _pid_file(data_dir / "run" / "ingest.pid"),
        "postgres": _pid_file(data_dir / "postgres" / "postmaster.pid"),
        "pgbouncer": _pid_file(data_dir / "run" / "pgbouncer.pid"),
    }
    return {name: read_tree(pid).total if pid else 0.0 for name, pid in roots.items()}


async def _send_all(url: str, bodies: list[bytes], concurrency: int) -> tuple[int, int]:
    import httpx  # the test extras; only this subcommand needs it

    headers = {
        "Content-Type": "text/plain",
        "Content-Encoding": "gzip",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
        "Origin": "https://example.com",
    }
    queue = list(reversed(bodies))
    ok = failed = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal ok, failed
            while queue:
                body = queue.pop()
                response = await client.post(url, content=body, headers=headers)
                if response.status_code == 202:
                    ok += 1
                else:
                    failed += 1
                    if failed <= 3:
                        print(f"  {response.status_code} {response.text[:200]}", flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, failed


def ingest_requests(
    ingest_url: str, data_dir: Path, project_key: str, payloads: PayloadPools, requests: int, concurrency: int
) -> list[str]:
    lines = [
        "| chunk, endpoint | requests (202) | ingest CPU ms per request | Postgres CPU ms per request "
        "| PgBouncer CPU ms per request | wall s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, members, per_session in (
        ("steady chunk", payloads.incremental_chunks, 1),
        ("first chunk", payloads.first_chunks, 0),
    ):
        # Steady chunks: seq 1 of fresh sessions, whose seq 0 is sent first (not measured), so each
        # measured chunk updates a session that exists, as in the seed's steady state.
        visitors = [VisitorIdentity(project_key) for _ in range(requests)]
        if per_session:
            setup = [
                body_for(v, 0, payloads.first_chunks[i % len(payloads.first_chunks)]) for i, v in enumerate(visitors)
            ]
            asyncio.run(_send_all(ingest_url + "/v1/replay", setup, concurrency))
        bodies = [body_for(v, per_session, members[i % len(members)]) for i, v in enumerate(visitors)]
        for endpoint in ("/v1/noop", "/v1/replay"):
            before, started = _stack_cpu(data_dir), time.perf_counter()
            ok, failed = asyncio.run(_send_all(ingest_url + endpoint, bodies, concurrency))
            after, wall = _stack_cpu(data_dir), time.perf_counter() - started
            per = {key: (after[key] - before[key]) * 1000 / max(ok, 1) for key in after}
            lines.append(
                f"| {name}, {endpoint} | {ok} ({failed} failed) | {per['ingest']:.3f} | {per['postgres']:.3f} | "
                f"{per['pgbouncer']:.3f} | {wall:.1f} |"
            )
            print(lines[-1], flush=True)
    return lines


# --- postgres -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    before: tuple[str, ...] = ()
    # "full": what the writer sends; "text": the writer's statement sent as text (planned for
    # every batch); "chunks only": its chunk insert without the session upsert, as text.
    statement: str = "full"
    # Store an empty body instead of the chunk's bytes: what carrying and storing them costs.
    empty_data: bool = False


_RESTORE = (
    "ALTER TABLE replay_chunks RESET (toast_tuple_target)",
    "ALTER TABLE replay_sessions RESET (fillfactor)",
)

# Each step keeps the previous steps' changes until "everything on again"; the table settings
# after it are tried one at a time on top of everything on.
VARIANTS = (
    Variant("everything on"),
    Variant("the statement sent as text (parsed and planned for every batch)", statement="text"),
    Variant("session upsert taken away (chunk insert only, as text)", statement="chunks only"),
    Variant(
        "  and the chunks' (project_id, distinct_id) index dropped",
        before=("DROP INDEX ix_replay_chunks_project_id_distinct_id",),
        statement="chunks only",
    ),
    Variant("  and no bytes stored (empty data)", statement="chunks only", empty_data=True),
    Variant(
        "everything on again",
        before=("CREATE INDEX ix_replay_chunks_project_id_distinct_id ON replay_chunks (project_id, distinct_id)",),
    ),
    Variant("everything on, no bytes stored (empty data)", empty_data=True),
    Variant(
        "setting: bytes inline up to ~8 kB (toast_tuple_target 8160)",
        before=("ALTER TABLE replay_chunks SET (toast_tuple_target = 8160)",),
    ),
    Variant(
        "setting: sessions fillfactor 70 (HOT updates), rewritten",
        before=(*_RESTORE, "ALTER TABLE replay_sessions SET (fillfactor = 70)", "VACUUM FULL replay_sessions"),
    ),
    Variant("everything on as migrated", before=_RESTORE),
)


def _statement(chunks: list[ChunkRow], kind: str) -> str:
    document = repository._dollar_quoted(repository._chunks_json(chunks))
    # "full": what the writer sends (since migration 0890 a call of the function that runs the
    # statement; before it, the statement's text); "text": the statement's text, planned each time.
    sql = getattr(repository, "_STORE_CHUNKS", repository._INSERT_CHUNKS)
    if kind != "full":
        sql = repository._INSERT_CHUNKS
    if kind == "chunks only":
        # The same input and chunk insert, without the per_session CTE and the sessions' upsert.
        head, _, _ = sql.partition("per_session AS")
        sql = head.rstrip().rstrip(",") + "\n    SELECT count(*) FROM stored"
    return sql.replace(repository._ROWS, document)


async def _run_batches(connection: asyncpg.Connection, statements: list[str]) -> tuple[float, float]:
    backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
    wal_before = await connection.fetchval("SELECT pg_current_wal_lsn()")
    cpu_before = read_tree(backend).own
    for sql in statements:
        await connection.execute(sql)
    cpu = read_tree(backend).own - cpu_before
    wal = float(await connection.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before))
    return cpu, wal


def _rows(
    payloads: PayloadPools, sessions: list[VisitorIdentity], seq: int, first: bool, empty: bool
) -> list[ChunkRow]:
    members = payloads.first_chunks if first else payloads.incremental_chunks
    rows = [chunk_row(body_for(v, seq, members[i % len(members)])) for i, v in enumerate(sessions)]
    if empty:
        rows = [_with_data(row, b"") for row in rows]
    return rows


def _with_data(row: ChunkRow, data: bytes) -> ChunkRow:
    fields = {name: getattr(row, name) for name in row.__dataclass_fields__}
    fields["data"] = data
    return ChunkRow(**fields)


async def measure(
    connection: asyncpg.Connection, variant: Variant, payloads: PayloadPools, batches: int, per_batch: int
) -> str:
    # Steady: seq 1.. of sessions whose seq 0 (a first chunk) was stored beforehand, not measured.
    sessions = [VisitorIdentity(PROJECT_KEY) for _ in range(per_batch * 8)]
    await connection.execute(_statement(_rows(payloads, sessions, 0, True, False), "full"))
    steady: list[str] = []
    for batch in range(WARM_UP_BATCHES + batches):
        # Each session sends its next chunk every 8 batches, 4 chunks per statement from 4 sessions.
        group = sessions[(batch % 8) * per_batch : (batch % 8 + 1) * per_batch]
        rows = _rows(payloads, group, 1 + batch // 8, False, variant.empty_data)
        steady.append(_statement(rows, variant.statement))
    first: list[str] = []
    first_batches = max(batches // 2, 10)
    for _ in range(WARM_UP_BATCHES + first_batches):
        rows = _rows(payloads, [VisitorIdentity(PROJECT_KEY) for _ in range(per_batch)], 0, True, variant.empty_data)
        first.append(_statement(rows, variant.statement))
    await _run_batches(connection, steady[:WARM_UP_BATCHES])
    steady_cpu, steady_wal = await _run_batches(connection, steady[WARM_UP_BATCHES:])
    await _run_batches(connection, first[:WARM_UP_BATCHES])
    first_cpu, first_wal = await _run_batches(connection, first[WARM_UP_BATCHES:])
    steady_chunks, first_chunks = batches * per_batch, first_batches * per_batch
    return (
        f"| {variant.name} | {steady_cpu * 1000 / steady_chunks:.3f} | {steady_wal / steady_chunks:.0f} | "
        f"{first_cpu * 1000 / first_chunks:.3f} | {first_wal / first_chunks:.0f} |"
    )


async def run_postgres(database_url: str, batches: int, per_batch: int, payloads: PayloadPools) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO projects (project_id, name, public_key, secret_key_hash)"
            " VALUES ($1, 'replay_cost bench', $2, 'not a hash') ON CONFLICT DO NOTHING",
            PROJECT_ID,
            PROJECT_KEY,
        )
        lines = [
            f"{batches} statements of {per_batch} steady chunks and {max(batches // 2, 10)} of {per_batch} first"
            " chunks per variant, one connection, one after another",
            "",
            "| variant | steady chunk: backend CPU ms per chunk | WAL bytes per chunk "
            "| first chunk: CPU ms per chunk | WAL bytes per chunk |",
            "| --- | --- | --- | --- | --- |",
        ]
        for variant in VARIANTS:
            for ddl in variant.before:
                await connection.execute(ddl)
            lines.append(await measure(connection, variant, payloads, batches, per_batch))
            print(lines[-1], flush=True)
        return lines
    finally:
        await connection.close()


# --- main -----------------------------------------------------------------------------------


def _timed(name: str, work: Callable[[], Awaitable[list[str]]] | Callable[[], list[str]]) -> list[str]:
    print(f"# {name}: load average {load_average()} at start, {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC", flush=True)
    result = work()
    lines = asyncio.run(result) if asyncio.iscoroutine(result) else result
    assert isinstance(lines, list)
    return [*lines, "", f"load average {load_average()} at end", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    pg = sub.add_parser("postgres", help="the writer's statement, parts taken away one by one")
    pg.add_argument("--database-url", required=True, help="postgresql://owner:password@host:port/<name>_scratch")
    pg.add_argument("--batches", type=int, default=200)
    pg.add_argument("--chunks-per-batch", type=int, default=4)
    ing = sub.add_parser("ingest", help="ingest's Python steps in process; whole requests with --ingest-url")
    ing.add_argument("--ingest-url", help="a running stack's ingest, started with SIGHTLINE_INGEST_BENCHMARK_NOOP=1")
    ing.add_argument("--data-dir", type=Path, help="that stack's SIGHTLINE_DATA_DIR (for its pids)")
    ing.add_argument("--requests", type=int, default=2000)
    ing.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if not Path("/proc/self/stat").exists():
        raise SystemExit("needs Linux /proc")
    if args.part == "postgres":
        database = urlsplit(args.database_url).path.lstrip("/")
        if not database.endswith("_scratch"):
            raise SystemExit(
                "this drops an index and changes table settings while it runs: give it a *_scratch database"
            )
        payloads = pools(PROJECT_KEY)
        lines = _timed(
            "postgres", lambda: run_postgres(args.database_url, args.batches, args.chunks_per_batch, payloads)
        )
    else:
        key = PROJECT_KEY
        if args.ingest_url:
            if args.data_dir is None:
                raise SystemExit("--ingest-url needs --data-dir")
            key = str(json.loads((args.data_dir / "demo-project.json").read_text())["publicKey"])
        payloads = pools(key)
        lines = _timed("ingest steps, in process", lambda: ingest_steps(payloads))
        if args.ingest_url:
            lines += _timed(
                "whole requests",
                lambda: ingest_requests(
                    args.ingest_url.rstrip("/"), args.data_dir, key, payloads, args.requests, args.concurrency
                ),
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
