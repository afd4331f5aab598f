"""The query service's app factory (Granian: `granian --factory services.query.app:create_app`)."""

from __future__ import annotations

from litestar import Litestar

from services.common.app import build_app
from services.common.settings import DatabaseSettings, LogSettings

DESCRIPTION = "Dashboard API: aggregates over stored events, authenticated with a project's secret key."


def create_app(database: DatabaseSettings | None = None, logs: LogSettings | None = None) -> Litestar:
    return build_app(
        service="query",
        title="Sightline query",
        description=DESCRIPTION,
        route_handlers=[],
        database=database or DatabaseSettings.from_env("query"),
        logs=logs or LogSettings.from_env("query"),
    )
