"""Shared fixtures: one real Postgres behind one real PgBouncer for the whole run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.common.db import create_admin_engine, create_engine
from services.common.errors import DATABASE_OUTAGE
from services.common.settings import DatabaseSettings, RateLimitSettings
from services.ingest.app import create_app as create_ingest_app
from services.ingest.settings import IngestSettings
from services.query.app import create_app as create_query_app
from services.query.settings import QuerySettings
from services.replay.app import create_app as create_replay_app
from tests.harness import DatabaseHarness, start_database_harness

# For tests that send many requests for one project; the limit has its own tests.
NO_RATE_LIMIT = RateLimitSettings(requests_per_s=0, burst=0)


@pytest.fixture(autouse=True)
def no_database_outage_carried_over() -> None:
    """DATABASE_OUTAGE is per process, like the outage it measures: one test's outage must not
    widen the next test's Retry-After."""
    DATABASE_OUTAGE.recovered()


@pytest.fixture(scope="session")
def db() -> Iterator[DatabaseHarness]:
    with start_database_harness() as database:
        yield database


@pytest.fixture(scope="session")
async def engine(db: DatabaseHarness) -> AsyncIterator[AsyncEngine]:
    """The services' engine (through PgBouncer)."""
    engine = create_engine("tests", db.database)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def admin_engine(db: DatabaseHarness) -> AsyncIterator[AsyncEngine]:
    """Direct to Postgres, for assertions that must bypass PgBouncer."""
    engine = create_admin_engine(db.admin)
    yield engine
    await engine.dispose()


@pytest.fixture
async def project(db: DatabaseHarness) -> dict[str, object]:
    """A fresh project per test, so tests never see each other's rows."""
    return await admin.create_project(
        db.admin,
        name=f"test-{uuid.uuid4().hex[:8]}",
        domains=["example.com", "shop.example.org"],
        timezone="Europe/Berlin",
    )


@dataclass
class Services:
    ingest: AsyncTestClient[Litestar]
    query: AsyncTestClient[Litestar]
    replay: AsyncTestClient[Litestar]


@asynccontextmanager
async def serve_all_three(database: DatabaseSettings) -> AsyncIterator[Services]:
    """The three apps on `database` with no rate limit, and no background rollup refresher: only
    the requests' own statements run."""
    ingest = create_ingest_app(database, settings=IngestSettings())
    query = create_query_app(database, query_settings=QuerySettings(rollup_interval_s=0), rate_limit=NO_RATE_LIMIT)
    replay = create_replay_app(database, rate_limit=NO_RATE_LIMIT)
    async with (
        AsyncTestClient(ingest) as ingest_client,
        AsyncTestClient(query) as query_client,
        AsyncTestClient(replay) as replay_client,
    ):
        yield Services(ingest_client, query_client, replay_client)
