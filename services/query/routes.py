"""HTTP edge of the query service: authorise, own the read transaction, call the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.auth import provide_read_project
from services.common.db import set_statement_timeout
from services.common.errors import error_responses
from services.common.project_repository import ProjectRecord
from services.common.ttl_cache import SharedTtlCache
from services.query import repository, service
from services.query.schemas import (
    FunnelResponse,
    FunnelSpec,
    QueryResponse,
    QuerySpec,
    RealtimeResponse,
    RetentionResponse,
    RetentionSpec,
)

_READ_ERRORS = {
    401: "Missing or unknown secret key.",
    429: "The project is over its rate limit; retry after Retry-After seconds.",
    503: "Database unavailable, or the query exceeded the statement timeout (code 'query_timeout').",
}
_SPEC_ERRORS = {422: "The spec is invalid; the error names the field and the problem.", **_READ_ERRORS}


@asynccontextmanager
async def read_transaction(state: State) -> AsyncIterator[AsyncConnection]:
    """One read-only transaction per request, every statement under the statement timeout."""
    async with state.engine.begin() as connection:
        await repository.configure_transaction(connection, read_only=True)
        await set_statement_timeout(connection, state.statement_timeout_ms)
        yield connection


class QueryController(Controller):
    path = "/v1"
    tags = ["query"]
    dependencies = {"project": Provide(provide_read_project)}

    @post(
        "/query",
        status_code=200,
        summary="Aggregate metrics by dimensions over a date range",
        responses=error_responses(_SPEC_ERRORS),
    )
    async def query(
        self, state: State, project: NamedDependency[ProjectRecord], data: JSONBody[QuerySpec]
    ) -> QueryResponse:
        """Metrics over the project's non-bot events, grouped by dimensions and filtered (filters are ANDed).

        Session metrics (sessions, bounce_rate, visit_duration, views_per_session) count each session once
        per group in which it has a matching event; a session is made of its events inside the date range.
        bounce_rate is the percent of sessions that consist of a single pageview; visit_duration is the
        mean of (last event - first event) in seconds. Time buckets are in the project's timezone.
        A session is a session_id's events within one local day (a visit crossing midnight counts on each
        day, as in Google Analytics). referrer, utm_*, country, browser, os, device, entry_page and
        exit_page describe the visit (its first event, or first/last pageview).

        Queries whose dimensions and filters a rollup holds (visit dimensions; or page with at most one
        visit dimension) read the per-day rollups (page rows also pre-combined per complete week) for days
        already rolled up and raw events for the rest; there unique visitors are HyperLogLog estimates,
        stated in `meta`. Every other figure is exact.
        """
        async with read_transaction(state) as connection:
            return await service.run_query(connection, project, data, datetime.now(UTC), state.query_settings)

    @get("/realtime", summary="Visitors in the last 5 minutes", responses=error_responses(_READ_ERRORS))
    async def realtime(self, state: State, project: NamedDependency[ProjectRecord]) -> RealtimeResponse:
        """Counted from events; every open dashboard polls it, so one answer per project serves all
        callers for SIGHTLINE_QUERY_REALTIME_CACHE_S (5 s)."""

        async def count() -> RealtimeResponse:
            async with read_transaction(state) as connection:
                return await service.realtime(connection, project, datetime.now(UTC))

        realtime_cache: SharedTtlCache[int, RealtimeResponse] = state.realtime_cache
        return await realtime_cache.get_or_load(project.project_id, count)

    @post(
        "/funnel",
        status_code=200,
        summary="Ordered steps: visitors, conversion and drop-off per step",
        responses=error_responses(_SPEC_ERRORS),
    )
    async def funnel(
        self, state: State, project: NamedDependency[ProjectRecord], data: JSONBody[FunnelSpec]
    ) -> FunnelResponse:
        """A visitor reaches step n if they did steps 1..n in this order, each strictly after the previous,
        all within window_minutes after their first step-1 event in the date range."""
        async with read_transaction(state) as connection:
            return await service.funnel(connection, project, data, datetime.now(UTC))

    @post(
        "/retention",
        status_code=200,
        summary="Weekly cohorts by first seen, share returning each following week",
        responses=error_responses(_SPEC_ERRORS),
    )
    async def retention(
        self, state: State, project: NamedDependency[ProjectRecord], data: JSONBody[RetentionSpec]
    ) -> RetentionResponse:
        """Cohorts are visitors first seen (ever) inside the date range, by the Monday-starting week of their
        first event in the project's timezone; week_offset n counts cohort members with an event in the n-th
        following week. Only weeks that have begun by the end of the range are listed."""
        async with read_transaction(state) as connection:
            return await service.retention(connection, project, data, datetime.now(UTC))
