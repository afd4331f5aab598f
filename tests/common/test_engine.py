"""The services' engine through PgBouncer in transaction mode."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import db as db_module
from services.common import pgbouncer_console
from services.common.db import create_engine, set_statement_timeout
from tests.harness import TEST_MAX_CONNECTIONS, TEST_POOL_SIZE, DatabaseHarness

CONCURRENT_SESSIONS = 500


async def test_many_more_sessions_than_postgres_allows(db: DatabaseHarness, admin_engine: AsyncEngine) -> None:
    assert CONCURRENT_SESSIONS > TEST_MAX_CONNECTIONS * 10
    engine = create_engine(
        "load",
        db.database_for("load", pool_size=CONCURRENT_SESSIONS, pool_timeout_s=60, connect_timeout_s=60),
    )
    server_connections_seen: list[int] = []
    finished = asyncio.Event()

    async def watch_server_connections() -> None:
        # Sampled directly on Postgres, not through PgBouncer.
        async with admin_engine.connect() as connection:
            while not finished.is_set():
                result = await connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = 'sightline' AND backend_type = 'client backend'"
                        " AND application_name = 'sightline-load'"
                    )
                )
                server_connections_seen.append(result.scalar_one())
                await connection.rollback()
                await asyncio.sleep(0.02)

    async def one_session(number: int) -> int:
        async with engine.begin() as connection:
            await connection.execute(text("SELECT pg_sleep(0.02)"))
            result = await connection.execute(text("SELECT CAST(:n AS int) * 2"), {"n": number})
            return int(result.scalar_one())

    watcher = asyncio.create_task(watch_server_connections())
    try:
        results = await asyncio.gather(*(one_session(n) for n in range(CONCURRENT_SESSIONS)))
    finally:
        finished.set()
        await watcher
        await engine.dispose()

    assert results == [n * 2 for n in range(CONCURRENT_SESSIONS)]
    assert max(server_connections_seen) > 1, "the watcher should have seen the pool at work"
    # default_pool_size plus reserve_pool_size (infra/pgbouncer/pgbouncer.ini.template)
    assert max(server_connections_seen) <= TEST_POOL_SIZE + 5


async def test_parameterised_statements_survive_transaction_pooling(engine: AsyncEngine) -> None:
    # Named prepared statements break under transaction pooling; many different statements
    # from many client connections would trip "does not exist" / "already exists".
    async def distinct_statements(worker: int) -> int:
        total = 0
        for step in range(20):
            async with engine.begin() as connection:
                result = await connection.execute(
                    text(f"SELECT CAST(:a AS int) + CAST(:b AS int) + {step}"), {"a": worker, "b": step}
                )
                total += int(result.scalar_one())
        return total

    totals = await asyncio.gather(*(distinct_statements(w) for w in range(30)))
    assert totals == [sum(w + 2 * s for s in range(20)) for w in range(30)]


async def test_application_name_names_the_service(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        result = await connection.execute(text("SELECT current_setting('application_name')"))
        assert result.scalar_one() == "sightline-tests"


async def test_statement_timeout_is_local_to_the_transaction(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await set_statement_timeout(connection, 50)
        with pytest.raises(DBAPIError, match="statement timeout"):
            await connection.execute(text("SELECT pg_sleep(1)"))
    # The next transaction, maybe on the same server connection, has no such limit.
    async with engine.begin() as connection:
        result = await connection.execute(text("SELECT current_setting('statement_timeout')"))
        assert result.scalar_one() == "0"


def test_pgbouncer_console_answers_show_pools(db: DatabaseHarness) -> None:
    pools = pgbouncer_console.show(db.pgbouncer_admin_url, "POOLS")
    stats = pgbouncer_console.show(db.pgbouncer_admin_url, "STATS")
    sightline_pool = [row for row in pools if row["database"] == "sightline"]
    assert sightline_pool
    assert sightline_pool[0]["pool_mode"] == "transaction"
    assert any(row["database"] == "sightline" for row in stats)


def test_pgbouncer_may_open_a_descriptor_per_allowed_client(db: DatabaseHarness) -> None:
    # runuser's PAM session would leave PgBouncer at a soft limit of 1024 descriptors.
    pid = db.pgbouncer.pid()
    assert pid is not None
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    [open_files] = [line for line in limits if line.startswith("Max open files")]
    soft_limit = int(open_files.split()[3])
    assert soft_limit >= db.pgbouncer.max_client_conn + 2 * TEST_POOL_SIZE


async def test_array_codecs_are_read_once_per_process_not_under_a_requests_settings(
    db: DatabaseHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg learns an array type's codec by querying the catalog (a recursive CTE), once per
    # connection, inside whatever transaction first needs it. The query service's transactions
    # turn nested loops off: under that setting the catalog query took 2-3 s on the Citus test
    # coordinator once the catalog had grown with partitions, on the first query of every new
    # pooled connection. The engine now reads those codecs once per process and hands them to
    # every connection as it opens.
    introspected: list[list[int]] = []
    learn = asyncpg.Connection._introspect_types

    async def recorded(self: asyncpg.Connection, typeoids: Any, timeout: Any) -> Any:
        introspected.append(sorted(typeoids))
        return await learn(self, typeoids, timeout)

    monkeypatch.setattr(asyncpg.Connection, "_introspect_types", recorded)
    monkeypatch.setattr(db_module, "_ARRAY_TYPE_ROWS", {})  # as in a process just started
    statement = text(
        "SELECT CAST(:days AS date[]), CAST(:names AS text[]), CAST(:ids AS bigint[]),"
        " CAST(:times AS timestamptz[]), CAST(:keys AS bytea[])"
    )
    values = {
        "days": [date(2026, 1, 12)],
        "names": ["a"],
        "ids": [1],
        "times": [datetime(2026, 1, 12, tzinfo=UTC)],
        "keys": [b"k"],
    }
    read_at_open: list[int] = []
    for _engine_number in range(2):  # two engines: two connections of one process
        engine = create_engine("codecs", db.database)
        try:
            async with engine.begin() as connection:
                read_at_open.append(len(introspected))
                await connection.execute(text("SELECT set_config('enable_nestloop', 'off', true)"))
                rows = await connection.execute(statement, values)
                assert rows.one() == tuple(values.values())
        finally:
            await engine.dispose()
        # nothing is looked up under the transaction's settings
        assert len(introspected) == read_at_open[-1]
    assert read_at_open == [1, 1]  # read when the first connection opened, never again
