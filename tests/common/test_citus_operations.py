"""Citus operations of docs/scaling.md on a real coordinator and workers (SIGHTLINE_TEST_CITUS_WORKERS=2).

Isolating a project and adding a worker + rebalancing move shards under a running schema; each
test checks where the rows went and that they read back exactly as before.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import citus
from services.cli.processes import free_port
from services.cli.stack import DATABASE_NAME, DATABASE_USER, SERVICE_DATABASE_USER
from tests.harness import DatabaseHarness
from tests.query.conftest import Event, insert_events


@pytest.fixture(autouse=True)
def _only_on_citus(db: DatabaseHarness) -> None:
    if db.citus is None:
        pytest.skip("Citus operations: SIGHTLINE_TEST_CITUS_WORKERS=2")


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar_one()


async def test_an_isolated_project_has_shards_of_its_own_and_keeps_its_rows(
    db: DatabaseHarness, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    await insert_events(admin_engine, project["id"], [Event("a", "s1", yesterday), Event("b", "s2", yesterday)])

    isolated = await citus.isolate_project(db.admin, int(project["id"]))

    assert isolated["project"] == project["id"]
    # The shard's hash range is this project's value alone, in events and every co-located table.
    single = (
        "SELECT bool_and(s.shardminvalue = s.shardmaxvalue) FROM pg_dist_shard s"
        " WHERE s.logicalrelid IN ('events'::regclass, 'replay_chunks'::regclass, 'query_rollup_days'::regclass)"
        " AND s.shardid IN (SELECT get_shard_id_for_distribution_column(s.logicalrelid, CAST(:id AS bigint)))"
    )
    assert await scalar(admin_engine, single, id=project["id"]) is True
    assert await scalar(admin_engine, "SELECT count(*) FROM events WHERE project_id = :id", id=project["id"]) == 2
    # Writes still work there, and the rollup trigger still notes the batch and its day (since
    # 0800 in a pending row: an insert no longer bumps the day's marker).
    pending = "SELECT count(*) FROM query_rollup_pending WHERE project_id = :id AND cardinality(days) = 1"
    before = await scalar(admin_engine, pending, id=project["id"])
    await insert_events(admin_engine, project["id"], [Event("c", "s3", yesterday)])
    assert await scalar(admin_engine, "SELECT count(*) FROM events WHERE project_id = :id", id=project["id"]) == 3
    assert await scalar(admin_engine, pending, id=project["id"]) == before + 1


async def test_a_new_worker_takes_shards_after_a_rebalance(
    db: DatabaseHarness, project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    assert db.citus is not None
    yesterday = datetime.now(UTC) - timedelta(days=1)
    await insert_events(admin_engine, project["id"], [Event("a", "s1", yesterday)])
    before = {node.port: node.shards for node in await citus.shards_per_node(db.admin)}

    owner_password = make_url(db.admin.url).password
    assert owner_password is not None
    # PgBouncer logs in as the services' role: the new worker must know it too.
    logins = [(SERVICE_DATABASE_USER, db.pgbouncer.password)]
    worker = db.citus.add_worker(DATABASE_USER, owner_password, DATABASE_NAME, port=free_port(), logins=logins)
    assert await citus.rebalance(db.admin, wait_s=300) == "finished"

    after = {node.port: node.shards for node in await citus.shards_per_node(db.admin)}
    assert worker.port not in before
    assert after[worker.port] > 0
    # Moved, not copied; the one more placement is the new worker's copy of projects (a reference table).
    assert sum(after.values()) == sum(before.values()) + 1
    assert await scalar(admin_engine, "SELECT count(*) FROM events WHERE project_id = :id", id=project["id"]) == 1
