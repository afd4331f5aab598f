"""Floods of unknown project keys, and a public /health/ready, against ingest served by Granian."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import event

from services.common.auth import ProjectCache
from services.common.db import create_engine
from services.common.health import ReadyProbe
from services.common.project_repository import ProjectRecord
from tests.harness import DatabaseHarness


@pytest.fixture(scope="module")
def ingest_url(db: DatabaseHarness) -> Iterator[str]:
    # A small pool: before lookups were limited, a flood of unknown keys took all of it. The
    # flood and the honest writes share the test's address: without the address's budget of
    # refusals (tests/hostile/test_budgets.py), so that the lookups themselves are what is tested.
    settings = {"DB_POOL_SIZE": "5", "ADDRESS_REFUSALS_PER_S": "0"}
    with db.serve("ingest", "hostile-unknown-keys", INGEST_WORKERS="1", **settings) as ingest:
        yield ingest.url


def batch(key: str, distinct_id: str) -> bytes:
    pageview = {
        "event": "pageview",
        "distinctId": distinct_id,
        "sessionId": distinct_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "url": "https://example.com/",
    }
    return msgspec.json.encode({"projectKey": key, "events": [pageview]})


async def test_a_flood_of_random_keys_leaves_honest_writes_alone(ingest_url: str, project: dict[str, Any]) -> None:
    headers = {"Content-Type": "text/plain"}
    limits = httpx.Limits(max_connections=500)
    async with httpx.AsyncClient(base_url=ingest_url, timeout=60, limits=limits) as client:

        async def random_key() -> int:
            key = "pk_" + secrets.token_urlsafe(16)
            response = await client.post(f"/v1/events?key={key}", content=batch(key, "attacker"), headers=headers)
            return response.status_code

        async def honest(number: int) -> int:
            await asyncio.sleep(number * 0.02)
            body = batch(project["publicKey"], f"visitor-{number}")
            response = await client.post("/v1/events", content=body, headers=headers)
            return response.status_code

        flood = [asyncio.create_task(random_key()) for _ in range(400)]
        honest_statuses = await asyncio.gather(*(honest(number) for number in range(20)))
        flood_statuses = await asyncio.gather(*flood)
    assert honest_statuses == [202] * 20
    # Unknown (401), or told to come back when too many lookups were waiting (503): never a
    # pooled connection taken from the writer.
    assert set(flood_statuses) <= {401, 503}
    assert flood_statuses.count(401) > 0


async def test_ready_is_answered_from_a_recent_probe(db: DatabaseHarness) -> None:
    engine = create_engine("ingest", db.database)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        probe = ReadyProbe(engine, ok_for_s=30)
        await asyncio.gather(*(probe.check() for _ in range(100)))
        for _ in range(100):
            await probe.check()
    finally:
        await engine.dispose()
    assert statements == ["SELECT 1"]


async def test_a_real_projects_expired_entry_is_looked_up_apart_from_a_flood_of_unknown_keys() -> None:
    """The flood holds every lookup turn; the honest project's refresh does not queue behind it."""
    cache = ProjectCache(ttl_s=0.0, max_concurrent_lookups=2, lookup_wait_s=30.0)
    honest = ProjectRecord(
        project_id=1,
        name="p",
        allowed_domains=("example.com",),
        timezone="UTC",
        public_key="pk_honest",
        retention_days=30,
    )
    cache.put("pk_honest", honest)  # known, and already expired (ttl 0)
    flood_answer = asyncio.Event()

    async def hung_unknown() -> ProjectRecord | None:
        await flood_answer.wait()
        return None

    flood = [asyncio.create_task(cache.get_or_load(f"pk_random{n}", hung_unknown)) for n in range(5)]
    await asyncio.sleep(0)  # the flood takes both turns; three wait for one (up to 30 s)
    renamed = ProjectRecord(
        project_id=1,
        name="q",
        allowed_domains=("example.com",),
        timezone="UTC",
        public_key="pk_honest",
        retention_days=30,
    )

    async def honest_lookup() -> ProjectRecord | None:
        return renamed

    # A hang guard, not a timing: behind the flood this would wait for its 30 s.
    async with asyncio.timeout(10):
        found = await cache.get_or_load("pk_honest", honest_lookup)
    assert found == renamed  # looked up afresh, not the stale copy
    assert not any(task.done() for task in flood)
    # A key never seen as a project waits its turn behind the flood like any other.
    unknown = asyncio.create_task(cache.get_or_load("pk_new", hung_unknown))
    await asyncio.sleep(0.05)
    assert not unknown.done()
    flood_answer.set()
    assert await asyncio.gather(*flood, unknown) == [None] * 6
