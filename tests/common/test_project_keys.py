"""`sightline project rotate-keys`, `revoke` and `delete` (issue 14)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner, Result
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.cli.main import cli
from services.common import project_repository
from services.common.rollup_purge_repository import INCREMENT_TABLES, SESSION_CUBE_TABLES
from services.replay.app import create_app as create_replay_app
from tests.harness import DatabaseHarness
from tests.replay.conftest import Chunk, insert_event, insert_session


@pytest.fixture
def admin_env(db: DatabaseHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTLINE_ADMIN_DATABASE_URL", db.admin.url)
    monkeypatch.setenv("SIGHTLINE_DATA_DIR", str(db.root / "no-local-stack"))


@pytest.fixture
async def other_project(db: DatabaseHarness) -> dict[str, Any]:
    return await admin.create_project(
        db.admin, name=f"other-{uuid.uuid4().hex[:8]}", domains=["other.example"], timezone="UTC"
    )


async def sightline(*arguments: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(arguments))


async def _project_of_public_key(engine: AsyncEngine, public_key: str) -> int | None:
    async with engine.connect() as connection:
        project = await project_repository.find_by_public_key(connection, public_key)
    return None if project is None else project.project_id


async def _sessions_status(db: DatabaseHarness, secret_key: str) -> int:
    # A fresh app, so its key cache is empty (the services cache a key for up to 30 s).
    async with AsyncTestClient(create_replay_app(db.database)) as client:
        response = await client.get("/v1/sessions", headers={"Authorization": f"Bearer {secret_key}"})
        return response.status_code


async def test_rotation_stops_the_old_secret_at_once_and_the_old_public_key_after_its_grace(
    admin_env: None, db: DatabaseHarness, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    old_public, old_secret = str(project["publicKey"]), str(project["secretKey"])
    result = await sightline("project", "rotate-keys", "--project", str(project["id"]))
    assert result.exit_code == 0, result.output
    rotated = json.loads(result.output)
    assert rotated["id"] == project["id"]
    assert rotated["previousPublicKeyValidForSeconds"] == 86_400  # the 24 h default
    assert rotated["publicKey"] != old_public
    assert rotated["secretKey"] != old_secret

    assert await _sessions_status(db, old_secret) == 401
    assert await _sessions_status(db, rotated["secretKey"]) == 200
    # Both public keys reach the project during the grace period.
    assert await _project_of_public_key(admin_engine, old_public) == project["id"]
    assert await _project_of_public_key(admin_engine, rotated["publicKey"]) == project["id"]

    # A day later (the expiry moved back instead of waiting): only the new public key works.
    async with admin_engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE projects SET previous_public_key_expires_at = now() - interval '1 second' WHERE project_id = :p"
            ),
            {"p": project["id"]},
        )
    assert await _project_of_public_key(admin_engine, old_public) is None
    assert await _project_of_public_key(admin_engine, rotated["publicKey"]) == project["id"]


async def test_rotation_without_grace_stops_the_old_public_key_at_once(
    admin_env: None, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    result = await sightline("project", "rotate-keys", "--project", str(project["id"]), "--grace-hours", "0")
    assert result.exit_code == 0, result.output
    assert await _project_of_public_key(admin_engine, str(project["publicKey"])) is None
    assert await _project_of_public_key(admin_engine, json.loads(result.output)["publicKey"]) == project["id"]


async def test_revoke_stops_every_key(
    admin_env: None, db: DatabaseHarness, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    result = await sightline("project", "revoke", "--project", str(project["id"]))
    assert result.exit_code == 0, result.output
    assert await _project_of_public_key(admin_engine, str(project["publicKey"])) is None
    assert await _sessions_status(db, str(project["secretKey"])) == 401


async def test_delete_removes_the_project_and_all_its_data_and_nothing_else(
    admin_env: None, admin_engine: AsyncEngine, project: dict[str, Any], other_project: dict[str, Any]
) -> None:
    now = datetime.now(UTC)
    for owner in (project, other_project):
        await insert_session(admin_engine, owner, [Chunk(0, [0], full_snapshot=True), Chunk(1, [1_000])])
        await insert_event(admin_engine, int(owner["id"]), distinct_id="v", session_id="s", occurred_at=now)
        async with admin_engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO query_goals (project_id, goal_id, name, kind, value)"
                    " VALUES (:p, gen_random_uuid(), 'Signed up', 'event', 'signup')"
                ),
                {"p": owner["id"]},
            )

    refused = await sightline("project", "delete", "--project", str(project["id"]))
    assert refused.exit_code == 2
    assert "--yes" in refused.output
    result = await sightline("project", "delete", "--project", str(project["id"]), "--yes")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "id": project["id"],
        "deletedRows": {
            "replay_chunks": 2,
            "replay_sessions": 1,
            "ingested_events": 0,
            "query_sessions": 1,  # the event's session, kept by the insert trigger
            "event_session_urls": 1,  # the event's URL, for the session list's search
            "events": 1,
            "query_rollup_visits": 0,
            "query_rollup_pages": 0,
            **dict.fromkeys(SESSION_CUBE_TABLES, 0),
            "query_rollup_page_weeks": 0,
            "query_rollup_weeks": 0,
            "query_rollup_retention": 0,
            "query_rollup_retention_weeks": 0,
            **dict.fromkeys(INCREMENT_TABLES, 0),
            "query_rollup_pending": 1,  # the event's keys, waiting for the refresher
            "query_rollup_days": 1,  # today's marker, made by the event's insert
            "query_goals": 1,
            "projects": 1,
        },
    }
    async with admin_engine.connect() as connection:
        for owner, expected in ((project, 0), (other_project, 1)):
            for table in ("events", "event_session_urls", "query_goals"):
                count = await connection.execute(
                    text(f"SELECT count(*) FROM {table} WHERE project_id = :p"), {"p": owner["id"]}
                )
                assert count.scalar_one() == expected, table
    again = await sightline("project", "delete", "--project", str(project["id"]), "--yes")
    assert again.exit_code == 1
    assert f"no project with id {project['id']}" in again.output
