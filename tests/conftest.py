"""Shared fixtures: one real Postgres behind one real PgBouncer for the whole run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.common.db import create_admin_engine, create_engine
from tests.harness import DatabaseHarness, start_database_harness


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
