"""The query service's app factory (Granian: `granian --factory services.query.app:create_app`)."""

from __future__ import annotations

from litestar import Litestar

from services.common.app import build_app
from services.common.auth import ProjectCache
from services.common.settings import DatabaseSettings, LogSettings
from services.query.routes import QueryController

DESCRIPTION = (
    "Dashboard API: aggregates over stored events, authenticated with a project's secret key "
    "(`Authorization: Bearer sk_...`). Bots are excluded from every figure; every query runs under a "
    "statement timeout and answers 503 `query_timeout` when it hits it."
)


def create_app(database: DatabaseSettings | None = None, logs: LogSettings | None = None) -> Litestar:
    database = database or DatabaseSettings.from_env("query")
    return build_app(
        service="query",
        title="Sightline query",
        description=DESCRIPTION,
        route_handlers=[QueryController],
        database=database,
        logs=logs or LogSettings.from_env("query"),
        state={"project_cache": ProjectCache(), "statement_timeout_ms": database.statement_timeout_ms},
    )
