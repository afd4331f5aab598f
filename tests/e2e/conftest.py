"""Browser-test fixtures: ingest served by Granian for real, and a project for 127.0.0.1."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

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
