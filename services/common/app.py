"""What every service's app has in common: engine lifespan, health, errors, OpenAPI, logs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from litestar import Litestar, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig
from litestar.types import ControllerRouterHandler, Middleware
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.api_reference import API_REFERENCE_POLICY, PlainReferencePlugin
from services.common.auth import ProjectCache
from services.common.db import create_engine, set_read_only, statement_timeout, transaction
from services.common.errors import EXCEPTION_HANDLERS, JsonBodyRequest
from services.common.gc_pauses import GcPauseLog
from services.common.health import HealthController, ReadyProbe
from services.common.log import configure_logging
from services.common.project_repository import ProjectRecord
from services.common.rate_limit import TokenBuckets
from services.common.settings import DatabaseSettings, LogSettings, RateLimitSettings, ServiceName
from services.common.telemetry import HeadSampledTracingMiddleware, configure_tracing, instrument_engine

Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


async def provide_read_transaction(
    state: State, project: NamedDependency[ProjectRecord]
) -> AsyncIterator[AsyncConnection]:
    """The request's transaction, read-only: the dependency a read route names ``connection``.

    The one transaction rule of every service: the edge owns the transaction. It begins here,
    commits when the handler returns and rolls back when it raises (Litestar throws the
    handler's exception into this generator); services and repositories never begin or commit.
    Every statement runs under the service's statement timeout (SET LOCAL, PgBouncer-safe).

    ``project`` (the key check) is named so that Litestar resolves it first: resolved side by
    side, a wrong key would hold a second pooled connection for nothing, and its 401 would leave
    the begun transaction to the garbage collector (SQLAlchemy warns, and terminates it).
    """
    async with transaction(state.engine) as connection:
        # Must come first in the transaction; a query can then never write, whatever it says.
        await set_read_only(connection)
        async with statement_timeout(connection, state.statement_timeout_ms):
            yield connection


async def provide_write_transaction(
    state: State, project: NamedDependency[ProjectRecord]
) -> AsyncIterator[AsyncConnection]:
    """Like provide_read_transaction, for the routes that change rows (erasure)."""
    async with transaction(state.engine) as connection, statement_timeout(connection, state.statement_timeout_ms):
        yield connection


@asynccontextmanager
async def running_in_background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """`work` runs as a task while the block runs (a background task's lifespan, tasks.py); it
    is cancelled, and waited for, when the block ends."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def secret_key_state(rate_limit: RateLimitSettings) -> dict[str, Any]:
    """What the secret-key APIs (query, replay) keep in their app's state for
    services.common.auth: the project cache and each project's rate limit."""
    return {"project_cache": ProjectCache(), "rate_limit": TokenBuckets(rate_limit.requests_per_s, rate_limit.burst)}


VERSION = "0.1.0"


# Collect the youngest generation every 20,000 net allocations instead of 700: a request
# allocates thousands of short-lived objects, and the default had the collector run several
# times per request. Measured with wrk (make bench-ingest's body, same run): about 8 % less
# ingest CPU per stored batch and 10 % per no-op request.
YOUNG_GENERATION_THRESHOLD = 20_000


@asynccontextmanager
async def garbage_collection_for_serving(app: Litestar) -> AsyncIterator[None]:
    """Once the app has started: freeze what startup made, collect young objects less often.

    Everything allocated so far (modules, the app, pools) lives as long as the process;
    frozen, the full collections never walk it again.
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, 20, 20)
    pauses = GcPauseLog()
    gc.callbacks.append(pauses)
    try:
        yield
    finally:
        gc.callbacks.remove(pauses)
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def default_content_security_policy(response: Response[Any]) -> Response[Any]:
    """A policy that runs no script on every answer without its own (the pages set theirs).

    The API reference at /schema is HTML on the origin that keeps the secret key; JSON and
    streams gain nothing from a script either.
    """
    response.headers.setdefault("Content-Security-Policy", API_REFERENCE_POLICY)
    return response


def build_app(
    *,
    service: ServiceName,
    title: str,
    description: str,
    route_handlers: Sequence[ControllerRouterHandler],
    database: DatabaseSettings,
    logs: LogSettings,
    lifespans: Sequence[Lifespan] = (),
    cors: CORSConfig | None = None,
    middleware: Sequence[Middleware] = (),
    state: dict[str, Any] | None = None,
) -> Litestar:
    configure_logging(service, logs.level)
    tracer_provider = configure_tracing(service)
    tracing_middleware: list[Middleware] = []
    if tracer_provider is not None:
        # Given as middleware, Litestar wraps it in its OpenTelemetryPlugin with our
        # middleware class (the plugin's own constructor ignores middleware_class).
        tracing_middleware.append(
            OpenTelemetryConfig(
                tracer_provider=tracer_provider,
                # One span per ASGI message cost most of a no-op endpoint's throughput.
                exclude_spans=["receive", "send"],
                exclude=["^/health/", "^/schema"],
                middleware_class=HeadSampledTracingMiddleware,
            ).middleware
        )

    @asynccontextmanager
    async def database_engine(app: Litestar) -> AsyncIterator[None]:
        # Made here, not at import, so every Granian worker gets its own pool and tests
        # can point an app at their own database.
        app.state.engine = create_engine(service, database)
        app.state.ready_probe = ReadyProbe(app.state.engine)
        if tracer_provider is not None:
            instrument_engine(app.state.engine, tracer_provider)
        try:
            yield
        finally:
            await app.state.engine.dispose()

    return Litestar(
        route_handlers=[HealthController, *route_handlers],
        lifespan=[database_engine, *lifespans, garbage_collection_for_serving],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=JsonBodyRequest,
        openapi_config=OpenAPIConfig(
            title=title,
            version=VERSION,
            description=description,
            path="/schema",
            # Not Scalar/Swagger: they load scripts from a CDN onto the origin that keeps the key.
            render_plugins=[PlainReferencePlugin(), JsonRenderPlugin()],
        ),
        cors_config=cors,
        middleware=[*tracing_middleware, *middleware],
        state=State({"statement_timeout_ms": database.statement_timeout_ms, **(state or {})}),
        logging_config=None,
        after_request=default_content_security_policy,
        debug=False,
    )
