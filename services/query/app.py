"""The query service's app factory (Granian: `granian --factory services.query.app:create_app`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from services.common.app import build_app, secret_key_state
from services.common.settings import DatabaseSettings, LogSettings, RateLimitSettings
from services.common.ttl_cache import SharedTtlCache
from services.query.pages import PAGE_HANDLERS
from services.query.routes import GoalController, QueryController
from services.query.schemas import RealtimeResponse
from services.query.service import GoalService, QueryService
from services.query.settings import QuerySettings
from services.query.tasks import rollup_refresher

DESCRIPTION = (
    "Dashboard API: aggregates over stored events, authenticated with a project's secret key "
    "(`Authorization: Bearer sk_...`). Bots are excluded from every figure; every query runs under a "
    "statement timeout and answers 503 `query_timeout` when it hits it."
)


def create_app(
    database: DatabaseSettings | None = None,
    logs: LogSettings | None = None,
    query_settings: QuerySettings | None = None,
    rate_limit: RateLimitSettings | None = None,
) -> Litestar:
    database = database or DatabaseSettings.from_env("query")
    settings = query_settings or QuerySettings.from_env()
    rate_limit = rate_limit or RateLimitSettings.from_env("query")

    @asynccontextmanager
    async def query_service(app: Litestar) -> AsyncIterator[None]:
        realtime_cache = SharedTtlCache[int, RealtimeResponse](ttl_s=settings.realtime_cache_s)
        app.state.query_service = QueryService(settings, realtime_cache)
        app.state.goal_service = GoalService(app.state.query_service)
        yield

    return build_app(
        service="query",
        title="Sightline query",
        description=DESCRIPTION,
        route_handlers=[QueryController, GoalController, *PAGE_HANDLERS],
        database=database,
        logs=logs or LogSettings.from_env("query"),
        lifespans=[query_service, rollup_refresher(database, settings)],
        state={
            **secret_key_state(rate_limit),
            "query_settings": settings,
        },
    )
