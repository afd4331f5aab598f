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

from services.common.db import create_engine
from services.common.health import ReadyProbe
from tests.harness import DatabaseHarness


@pytest.fixture(scope="module")
def ingest_url(db: DatabaseHarness) -> Iterator[str]:
    # A small pool: before lookups were limited, a flood of unknown keys took all of it.
    with db.serve("ingest", "hostile-unknown-keys", INGEST_WORKERS="1", DB_POOL_SIZE="5") as ingest:
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
