"""The ingest service's app factory (Granian: `granian --factory services.ingest.app:create_app`)."""

from __future__ import annotations

from litestar import Litestar

from services.common.app import build_app
from services.common.settings import DatabaseSettings, LogSettings

DESCRIPTION = (
    "Receives events and session-replay chunks from browser trackers; answers 202 only once rows are committed."
)


def create_app(database: DatabaseSettings | None = None, logs: LogSettings | None = None) -> Litestar:
    return build_app(
        service="ingest",
        title="Sightline ingest",
        description=DESCRIPTION,
        route_handlers=[],
        database=database or DatabaseSettings.from_env("ingest"),
        logs=logs or LogSettings.from_env("ingest"),
    )
