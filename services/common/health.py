"""Liveness and readiness, the same on every service."""

from __future__ import annotations

import asyncio
import time

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import DATABASE_OUTAGE, ServiceUnavailable, error_responses, is_database_unavailable

READY_TIMEOUT_S = 2.0


class ReadyProbe:
    """The database probe behind /health/ready, run at most once per ``ok_for_s`` however often it is asked.

    /health/ready is public; a query per call would let anyone spend pooled connections with it.
    Concurrent calls share one probe, and a success is reused for ok_for_s. A failure is not
    reused (by default), so recovery shows at once; while the database is away, the calls still
    share one probe at a time.
    """

    def __init__(self, engine: AsyncEngine, ok_for_s: float = 1.0, failed_for_s: float = 0.0) -> None:
        self._engine = engine
        self._ok_for_s = ok_for_s
        self._failed_for_s = failed_for_s
        self._answer: tuple[float, ServiceUnavailable | None] | None = None
        self._running: asyncio.Future[ServiceUnavailable | None] | None = None

    async def check(self) -> None:
        """Returns when the database answered recently; raises ServiceUnavailable otherwise."""
        answer = self._answer
        if answer is None or answer[0] < time.monotonic():
            if self._running is None:
                self._running = asyncio.ensure_future(self._probe())
            running = self._running
            failure = await asyncio.shield(running)
        else:
            failure = answer[1]
        if failure is not None:
            # A fresh exception per answer: one instance raised again and again would keep growing its traceback.
            raise ServiceUnavailable(failure.code, failure.message)

    async def _probe(self) -> ServiceUnavailable | None:
        try:
            failure = await _probe_once(self._engine)
            keep_for = self._ok_for_s if failure is None else self._failed_for_s
            self._answer = (time.monotonic() + keep_for, failure)
            return failure
        finally:
            self._running = None


async def _probe_once(engine: AsyncEngine) -> ServiceUnavailable | None:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except TimeoutError:
        DATABASE_OUTAGE.failed()
        return ServiceUnavailable("database_unavailable", "The database did not answer in time.")
    except Exception as exc:
        if is_database_unavailable(exc):
            DATABASE_OUTAGE.failed()
            return ServiceUnavailable("database_unavailable", "The database cannot be reached.")
        raise
    DATABASE_OUTAGE.recovered()
    return None


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
        summary="A query through PgBouncer succeeded within the last second",
        responses=error_responses({503: "The database cannot be reached; retry after Retry-After seconds"}),
    )
    async def ready(self, state: State) -> HealthStatus:
        probe: ReadyProbe = state.ready_probe
        await probe.check()
        return HealthStatus(status="ready")
