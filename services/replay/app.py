"""The replay service's app factory (Granian: `granian --factory services.replay.app:create_app`)."""

from __future__ import annotations

from litestar import Litestar

from services.common.app import build_app
from services.common.settings import DatabaseSettings, LogSettings

DESCRIPTION = (
    "Session list and streamed rrweb recordings for a replay player, authenticated with a project's secret key."
)


def create_app(database: DatabaseSettings | None = None, logs: LogSettings | None = None) -> Litestar:
    return build_app(
        service="replay",
        title="Sightline replay",
        description=DESCRIPTION,
        route_handlers=[],
        database=database or DatabaseSettings.from_env("replay"),
        logs=logs or LogSettings.from_env("replay"),
    )
