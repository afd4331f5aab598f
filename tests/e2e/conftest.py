"""Browser-test fixtures: ingest, replay and query served by Granian for real, and a project for 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cli import admin
from tests.e2e.browser import require_chromium
from tests.harness import DatabaseHarness


@pytest.fixture(scope="module")
def ingest_url(db: DatabaseHarness) -> Iterator[str]:
    require_chromium()
    # Projects are made per test, after ingest started: CORS must see them quickly.
    with db.serve("ingest", "ingest-e2e", INGEST_WORKERS="1", INGEST_PROJECT_CACHE_TTL_S="0.5") as ingest:
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
    settings = {
        "REPLAY_WORKERS": "1",
        "QUERY_WORKERS": "1",
        # Rollups are rebuilt by a background task; off, every figure is read from events at once.
        "QUERY_ROLLUP_INTERVAL_S": "0",
        # INFO, the level `make up` runs at: whatever the services log there must not hold a key.
        "LOG_LEVEL": "INFO",
    }
    with db.serve("replay", "replay-pages", **settings) as replay:
        # The dashboard links to the replay service, so query starts second, with its URL.
        query_service = db.serve("query", "query-pages", **settings, QUERY_REPLAY_URL=replay.url)
        with query_service as query:
            logs = (db.root / "log" / "replay-pages.log", db.root / "log" / "query-pages.log")
            yield PagesStack(replay.url, query.url, logs)
