"""Liveness and readiness, the same on every service."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import ServiceUnavailable, error_responses, is_database_unavailable

READY_TIMEOUT_S = 2.0


class HealthStatus(msgspec.Struct):
    status: str


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    include_in_schema = True

    @get("/live", summary="The process is up and serving requests")
    async def live(self) -> HealthStatus:
        return HealthStatus(status="ok")

    @get(
        "/ready",
        summary="A query through PgBouncer succeeds",
        responses=error_responses({503: "The database cannot be reached; retry after Retry-After seconds"}),
    )
    async def ready(self, state: State) -> HealthStatus:
        engine: AsyncEngine = state.engine
        try:
            async with asyncio.timeout(READY_TIMEOUT_S), engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except TimeoutError as exc:
            raise ServiceUnavailable("database_unavailable", "The database did not answer in time.") from exc
        except Exception as exc:
            if is_database_unavailable(exc):
                raise ServiceUnavailable("database_unavailable", "The database cannot be reached.") from exc
            raise
        return HealthStatus(status="ready")
