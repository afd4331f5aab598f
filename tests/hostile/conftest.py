"""All three services on the real database, and what a hostile-input test asserts about an answer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.cli import admin
from services.common.settings import RateLimitSettings
from services.ingest.app import create_app as create_ingest_app
from services.ingest.settings import IngestSettings
from services.query.app import create_app as create_query_app
from services.query.settings import QuerySettings
from services.replay.app import create_app as create_replay_app
from tests.harness import DatabaseHarness

# These tests send many requests for one project; the limit has its own tests.
NO_RATE_LIMIT = RateLimitSettings(requests_per_s=0, burst=0)


@dataclass
class Services:
    ingest: AsyncTestClient[Litestar]
    query: AsyncTestClient[Litestar]
    replay: AsyncTestClient[Litestar]


@pytest.fixture(scope="module")
async def services(db: DatabaseHarness) -> AsyncIterator[Services]:
    ingest = create_ingest_app(db.database, settings=IngestSettings())
    query = create_query_app(db.database, query_settings=QuerySettings(rollup_interval_s=0), rate_limit=NO_RATE_LIMIT)
    replay = create_replay_app(db.database, rate_limit=NO_RATE_LIMIT)
    async with (
        AsyncTestClient(ingest) as ingest_client,
        AsyncTestClient(query) as query_client,
        AsyncTestClient(replay) as replay_client,
    ):
        yield Services(ingest_client, query_client, replay_client)


@pytest.fixture
async def other_project(db: DatabaseHarness) -> dict[str, Any]:
    """A second project with other domains, to show that one key never reaches the other's rows."""
    return await admin.create_project(
        db.admin, name=f"other-{uuid.uuid4().hex[:8]}", domains=["other.example"], timezone="UTC"
    )


def bearer(project: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {project['secretKey']}"}


def assert_error(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The status, the JSON error body with its code (and field), and no trace of our insides."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if field is not None:
        assert error.get("field") == field, error
    assert "Traceback" not in response.text
    assert "asyncpg" not in response.text
    return error
