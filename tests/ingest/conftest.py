"""Ingest fixtures: the real app against the real database (through PgBouncer)."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.harness import DatabaseHarness

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture
async def ingest_app(db: DatabaseHarness) -> Litestar:
    # As served: requests as the services' role, partition upkeep as the owner.
    return create_app(db.database, settings=IngestSettings(), admin_database=db.admin)


@pytest.fixture
async def client(ingest_app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(ingest_app) as test_client:
        yield test_client


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def pageview(**overrides: Any) -> dict[str, Any]:
    event = {
        "event": "pageview",
        "distinctId": "visitor-1",
        "sessionId": "session-1",
        "timestamp": now_iso(),
        "url": "https://example.com/pricing",
    }
    event.update(overrides)
    return event


def json_body(payload: Any) -> bytes:
    return msgspec.json.encode(payload)


def gzip_body(payload: Any) -> bytes:
    return gzip.compress(json_body(payload))


JSON = {"content-type": "application/json", "user-agent": CHROME_WINDOWS}
GZIP_JSON = {**JSON, "content-encoding": "gzip"}


async def stored_events(admin_engine: AsyncEngine, project_id: int) -> list[Any]:
    async with admin_engine.connect() as connection:
        result = await connection.execute(
            text("SELECT * FROM events WHERE project_id = :id ORDER BY occurred_at, event_uuid"), {"id": project_id}
        )
        return list(result)


async def count_rows(admin_engine: AsyncEngine, project_id: int) -> dict[str, int]:
    async with admin_engine.connect() as connection:
        counts = {}
        for table in ("events", "ingested_events", "replay_chunks", "replay_sessions"):
            result = await connection.execute(
                text(f"SELECT count(*) FROM {table} WHERE project_id = :id"), {"id": project_id}
            )
            counts[table] = result.scalar_one()
        return counts


def new_uuid() -> str:
    return str(uuid.uuid4())
