"""The replay service's app factory (Granian: `granian --factory services.replay.app:create_app`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from services.common.app import build_app, secret_key_state
from services.common.settings import DatabaseSettings, LogSettings, RateLimitSettings
from services.replay.pages import PAGE_HANDLERS
from services.replay.routes import ReplayController
from services.replay.service import ReplayService
from services.replay.settings import ReplaySettings

DESCRIPTION = (
    "Session list and streamed rrweb recordings for a replay player, authenticated with a project's secret key"
    " (`Authorization: Bearer sk_...`). A key only ever reads its own project's sessions."
)


@asynccontextmanager
async def replay_service(app: Litestar) -> AsyncIterator[None]:
    # After the engine's lifespan: the service streams recordings from that engine.
    app.state.replay_service = ReplayService(app.state.engine)
    yield


def create_app(
    database: DatabaseSettings | None = None,
    logs: LogSettings | None = None,
    rate_limit: RateLimitSettings | None = None,
    replay_settings: ReplaySettings | None = None,
) -> Litestar:
    database = database or DatabaseSettings.from_env("replay")
    settings = replay_settings or ReplaySettings.from_env()
    rate_limit = rate_limit or RateLimitSettings.from_env("replay")
    return build_app(
        service="replay",
        title="Sightline replay",
        description=DESCRIPTION,
        route_handlers=[ReplayController, *PAGE_HANDLERS],
        database=database,
        logs=logs or LogSettings.from_env("replay"),
        lifespans=[replay_service],
        state={
            **secret_key_state(rate_limit),
            "replay_settings": settings,
        },
    )
