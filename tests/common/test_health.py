"""Health endpoints on every service, against the real database and an unreachable one."""

from __future__ import annotations

import asyncio

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.cli.processes import free_port
from services.common.db import create_engine
from services.common.errors import describe_database_error, is_database_unavailable
from services.common.settings import DatabaseSettings
from services.ingest.app import create_app as create_ingest
from services.query.app import create_app as create_query
from services.replay.app import create_app as create_replay
from tests.harness import DatabaseHarness

FACTORIES = [create_ingest, create_query, create_replay]


@pytest.mark.parametrize("create_app", FACTORIES)
async def test_ready_when_the_database_answers(db: DatabaseHarness, create_app) -> None:  # type: ignore[no-untyped-def]
    async with AsyncTestClient(create_app(db.database)) as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


@pytest.mark.parametrize("create_app", FACTORIES)
async def test_not_ready_answers_503_quickly_when_the_database_is_unreachable(create_app) -> None:  # type: ignore[no-untyped-def]
    closed_port = free_port()
    unreachable = DatabaseSettings(
        url=f"postgresql+asyncpg://sightline:x@127.0.0.1:{closed_port}/sightline", connect_timeout_s=1
    )
    async with AsyncTestClient(create_app(unreachable)) as client:
        # A hang would fail here rather than stall the suite.
        async with asyncio.timeout(10):
            live = await client.get("/health/live")
            ready = await client.get("/health/ready")
    assert live.status_code == 200
    assert ready.status_code == 503
    assert 2 <= int(ready.headers["retry-after"]) <= 4  # 2 s plus jitter
    assert ready.json() == {"error": {"code": "database_unavailable", "message": "The database cannot be reached."}}


@pytest.mark.parametrize("create_app", FACTORIES)
async def test_openapi_schema_is_served(db: DatabaseHarness, create_app) -> None:  # type: ignore[no-untyped-def]
    async with AsyncTestClient(create_app(db.database)) as client:
        response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/health/live", "/health/ready"} <= set(paths)


async def test_unknown_route_gets_the_json_error_body(db: DatabaseHarness) -> None:
    async with AsyncTestClient(create_ingest(db.database)) as client:
        response = await client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}}


async def test_a_connection_lost_mid_request_is_logged_with_its_cause_not_its_statement(
    db: DatabaseHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # What the 503 log line said before was only the wrapper's class ("InternalError"), which
    # cannot tell a server's error from a dropped connection; the statement's parameters
    # (personal data) stay out of it.
    engine = create_engine("test", db.database)
    try:
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as connection:
                await connection.execute(
                    text("SELECT :visitor, pg_terminate_backend(pg_backend_pid())"), {"visitor": "visitor-42"}
                )
    finally:
        await engine.dispose()
    assert is_database_unavailable(raised.value)
    described = describe_database_error(raised.value)
    assert "visitor-42" not in described
    assert "SELECT" not in described
    assert described.startswith(type(raised.value).__name__ + " from asyncpg.")
    assert described.endswith("(connection closed)")
