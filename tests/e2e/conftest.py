"""Browser-test fixtures: ingest, replay and query served by Granian for real, and a project for 127.0.0.1."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cli import admin
from services.cli.serving import running_service
from tests.e2e.browser import require_chromium
from tests.harness import DatabaseHarness


@pytest.fixture(scope="module")
def ingest_url(db: DatabaseHarness) -> Iterator[str]:
    require_chromium()
    env = {
        **os.environ,
        "SIGHTLINE_DATABASE_URL": db.database.url,
        "SIGHTLINE_INGEST_WORKERS": "1",
        # Projects are made per test, after ingest started: CORS must see them quickly.
        "SIGHTLINE_INGEST_PROJECT_CACHE_TTL_S": "0.5",
        "SIGHTLINE_LOG_LEVEL": "WARNING",
    }
    with running_service("ingest", env, db.root / "log" / "ingest-e2e.log") as ingest:
        yield ingest.url


@pytest.fixture
async def site_project(db: DatabaseHarness) -> dict[str, object]:
    """A project whose allowed domain is the test site's host."""
    return await admin.create_project(
        db.admin, name=f"e2e-{uuid.uuid4().hex[:8]}", domains=["127.0.0.1"], timezone="UTC"
    )


@dataclass(frozen=True)
class PagesStack:
    """The replay and query services under Granian, as the pages' tests reach them, and their logs."""

    replay_url: str
    query_url: str
    log_paths: tuple[Path, ...]


@pytest.fixture(scope="module")
def pages_stack(db: DatabaseHarness) -> Iterator[PagesStack]:
    require_chromium()
    env = {
        **os.environ,
        "SIGHTLINE_DATABASE_URL": db.database.url,
        "SIGHTLINE_REPLAY_WORKERS": "1",
        "SIGHTLINE_QUERY_WORKERS": "1",
        # Rollups are rebuilt by a background task; off, every figure is read from events at once.
        "SIGHTLINE_QUERY_ROLLUP_INTERVAL_S": "0",
        # INFO, the level `make up` runs at: whatever the services log there must not hold a key.
        "SIGHTLINE_LOG_LEVEL": "INFO",
    }
    replay_log = db.root / "log" / "replay-pages.log"
    query_log = db.root / "log" / "query-pages.log"
    with running_service("replay", env, replay_log) as replay:
        query_env = {**env, "SIGHTLINE_QUERY_REPLAY_URL": replay.url}
        with running_service("query", query_env, query_log) as query:
            yield PagesStack(replay.url, query.url, (replay_log, query_log))
