"""HTTP edge of the query service: authorise, name the read transaction (`connection`), call the service."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime

from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.app import provide_read_transaction, provide_write_transaction
from services.common.auth import provide_read_project
from services.common.errors import error_responses
from services.common.project_repository import ProjectRecord
from services.query.schemas import (
    ConversionsResponse,
    ConversionsSpec,
    FunnelResponse,
    FunnelSpec,
    Goal,
    GoalList,
    GoalSpec,
    QueryResponse,
    QuerySpec,
    RealtimeResponse,
    RetentionResponse,
    RetentionSpec,
)
from services.query.service import GoalService, QueryService

_READ_ERRORS = {
    401: "Missing or unknown secret key.",
    429: "The project is over its rate limit; retry after Retry-After seconds.",
    503: "Database unavailable, or the query exceeded the statement timeout (code 'query_timeout').",
}
_SPEC_ERRORS = {422: "The spec is invalid; the error names the field and the problem.", **_READ_ERRORS}

_read_transaction = asynccontextmanager(provide_read_transaction)

# What the handlers are given (the controller's dependencies, by name).
Service = NamedDependency[QueryService]
Connection = NamedDependency[AsyncConnection]
Project = NamedDependency[ProjectRecord]


def _post_spec(path: str, summary: str) -> post:
    """A POST that takes a spec and answers 200 (not Litestar's 201: nothing is created)."""
    return post(path, status_code=200, summary=summary, responses=error_responses(_SPEC_ERRORS))


def provide_query_service(state: State) -> QueryService:
    service: QueryService = state.query_service
    return service


def provide_goal_service(state: State) -> GoalService:
    service: GoalService = state.goal_service
    return service


class QueryController(Controller):
    path = "/v1"
    tags = ["query"]
    dependencies = {
        "project": Provide(provide_read_project),
        "query_service": Provide(provide_query_service, sync_to_thread=False),
        "connection": Provide(provide_read_transaction),
    }

    @_post_spec("/query", "Aggregate metrics by dimensions over a date range")
    async def query(
        self, query_service: Service, connection: Connection, project: Project, data: JSONBody[QuerySpec]
    ) -> QueryResponse:
        """Metrics over the project's non-bot events, grouped by dimensions and filtered (filters are ANDed).

        A session is a session_id's events, whatever days it spans, and counts once: it belongs to the
        date range and to the time bucket in which it started (its first event); its duration (last event -
        first event, seconds), views per session, entry and exit pages and bounce (a single pageview and
        nothing else) are the whole session's, including events after the range's end. Pageviews, events
        and visitors count the events inside the range (or bucket) by their own time, so a session begun
        before the range adds its later pageviews but is not one of the range's sessions. referrer, utm_*,
        country, browser, os, device, entry_page and exit_page describe the visit (its first event, first
        and last pageview); an event has its session's. Grouped or filtered by page, domain or event_name,
        a session counts once in each group it has an event in, anywhere in the session. Time buckets are
        in the project's timezone.

        Queries whose dimensions and filters a rollup holds (visit dimensions; or page with at most one
        visit dimension) read the per-day rollups (page rows also pre-combined per complete week) for days
        already rolled up and raw events for the rest; there unique visitors are HyperLogLog estimates,
        stated in `meta`. Every other figure is exact.
        """
        return await query_service.run_query(connection, project, data, datetime.now(UTC))

    @get("/realtime", summary="Visitors in the last 5 minutes", responses=error_responses(_READ_ERRORS))
    async def realtime(self, state: State, query_service: Service, project: Project) -> RealtimeResponse:
        """Counted from events; every open dashboard polls it, so one answer per project serves all
        callers for SIGHTLINE_QUERY_REALTIME_CACHE_S (5 s)."""
        # The one route without the `connection` dependency: a cached answer must not check out a
        # pooled connection, so a miss opens its own short read transaction (same rules as the
        # dependency's) and a hit opens none.
        return await query_service.realtime(project, lambda: _read_transaction(state, project))

    @_post_spec("/funnel", "Ordered steps: visitors, conversion and drop-off per step")
    async def funnel(
        self, query_service: Service, connection: Connection, project: Project, data: JSONBody[FunnelSpec]
    ) -> FunnelResponse:
        """A visitor reaches step n if they did steps 1..n in this order, each strictly after the previous,
        all within window_minutes after their first step-1 event in the date range."""
        return await query_service.funnel(connection, project, data, datetime.now(UTC))

    @_post_spec("/retention", "Weekly cohorts by first seen, share returning each following week")
    async def retention(
        self, query_service: Service, connection: Connection, project: Project, data: JSONBody[RetentionSpec]
    ) -> RetentionResponse:
        """Cohorts are visitors first seen (ever) inside the date range, by the Monday-starting week of their
        first session's start in the project's timezone; week_offset n counts cohort members with a session
        starting in the n-th following week (a session belongs to the week it started in, as in /v1/query).
        Only weeks that have begun by the end of the range are listed."""
        return await query_service.retention(connection, project, data, datetime.now(UTC))


class GoalController(Controller):
    """A project's goals (a page path or a custom event name) and their conversions."""

    path = "/v1/goals"
    tags = ["goals"]
    dependencies = {
        "project": Provide(provide_read_project),
        "goal_service": Provide(provide_goal_service, sync_to_thread=False),
        "connection": Provide(provide_read_transaction),
    }

    @get("/", summary="The project's goals, oldest first", responses=error_responses(_READ_ERRORS))
    async def list_goals(
        self, goal_service: NamedDependency[GoalService], connection: Connection, project: Project
    ) -> GoalList:
        return await goal_service.list_goals(connection, project)

    @post(
        "/",
        summary="Save a goal: a page path or a custom event name",
        dependencies={"connection": Provide(provide_write_transaction)},
        responses=error_responses(
            {
                409: "The project already has this goal (code 'goal_exists'), or 100 goals ('too_many_goals').",
                **_SPEC_ERRORS,
            }
        ),
    )
    async def create_goal(
        self,
        goal_service: NamedDependency[GoalService],
        connection: Connection,
        project: Project,
        data: JSONBody[GoalSpec],
    ) -> Goal:
        """A page goal is reached by a visitor with an event on exactly that path; an event goal by one who sent a
        custom event of that name. One goal per type and value; at most 100 per project."""
        return await goal_service.create_goal(connection, project, data)

    @delete(
        "/{goal_id:str}",
        summary="Delete a goal",
        dependencies={"connection": Provide(provide_write_transaction)},
        responses=error_responses({404: "No such goal in this project.", **_READ_ERRORS}),
    )
    async def delete_goal(
        self,
        goal_service: NamedDependency[GoalService],
        connection: Connection,
        project: Project,
        goal_id: FromPath[str],
    ) -> None:
        await goal_service.delete_goal(connection, project, goal_id)

    @_post_spec("/conversions", "Each goal's unique visitors and conversion rate over a date range")
    async def conversions(
        self,
        goal_service: NamedDependency[GoalService],
        connection: Connection,
        project: Project,
        data: JSONBody[ConversionsSpec],
    ) -> ConversionsResponse:
        """A goal's visitors are the unique visitors who reached it inside the range (with the filters, as in
        /v1/query); its conversion rate is their share of all the range's visitors under the same filters.
        Counted through the query path, so days already rolled up are read from the page and event-name
        rollups where those hold the filters: visitors are then HyperLogLog estimates, stated in `meta`."""
        return await goal_service.conversions(connection, project, data, datetime.now(UTC))
