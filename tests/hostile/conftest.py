"""All three services on the real database, and what a hostile-input test asserts about an answer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.cli import admin
from tests.conftest import Services, serve_all_three
from tests.harness import DatabaseHarness


@pytest.fixture(scope="module")
async def services(db: DatabaseHarness) -> AsyncIterator[Services]:
    async with serve_all_three(db.database) as running:
        yield running


@pytest.fixture
async def other_project(db: DatabaseHarness) -> dict[str, Any]:
    """A second project with other domains, to show that one key never reaches the other's rows."""
    return await admin.create_project(
        db.admin, name=f"other-{uuid.uuid4().hex[:8]}", domains=["other.example"], timezone="UTC"
    )


def bearer(project: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {project['secretKey']}"}


def assert_error(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The status, the JSON error body with its code (and field), and no trace of our insides."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if field is not None:
        assert error.get("field") == field, error
    assert "Traceback" not in response.text
    assert "asyncpg" not in response.text
    return error
