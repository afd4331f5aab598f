"""`sightline project set-retention` and `sightline retention apply`: expired data goes, the rest stays."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli.main import cli
from services.common import partition_repository
from services.common.rollup_purge_repository import (
    DAY_ROLLUP_TABLES,
    INCREMENT_TABLES,
    RETENTION_ROLLUP_TABLES,
    WEEK_ROLLUP_TABLES,
)
from services.query.app import create_app as create_query_app
from services.query.settings import QuerySettings
from tests.harness import DatabaseHarness
from tests.query.conftest import Event as QueryEvent
from tests.query.conftest import berlin, build_rollups, insert_events, new_project
from tests.replay.conftest import Chunk, insert_event, insert_session, project_rows, session_urls


@pytest.fixture
def admin_env(db: DatabaseHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTLINE_ADMIN_DATABASE_URL", db.admin.url)
    monkeypatch.setenv("SIGHTLINE_DATA_DIR", str(db.root / "no-local-stack"))


async def sightline(*arguments: str) -> Result:
    # The command runs its own event loop, so it runs in a thread of its own here.
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(arguments))
    assert result.exit_code == 0, result.output
    return result


# What retention removes, per project: session ids of events, sessions and chunks.
RETAINED_ROWS = {
    "events": "SELECT session_id FROM events WHERE project_id = :p ORDER BY session_id",
    "sessions": "SELECT session_id FROM replay_sessions WHERE project_id = :p ORDER BY session_id",
    "chunks": "SELECT DISTINCT session_id FROM replay_chunks WHERE project_id = :p ORDER BY 1",
    "idempotencyKeys": "SELECT count(*) FROM ingested_events WHERE project_id = :p",
    "querySessions": "SELECT session_id FROM query_sessions WHERE project_id = :p ORDER BY session_id",
    "sessionUrls": "SELECT session_id FROM event_session_urls WHERE project_id = :p ORDER BY session_id",
}


async def _data_around_thirty_days(engine: AsyncEngine, project: dict[str, Any], now: datetime) -> None:
    for age_days, name in [(31, "old"), (29, "recent")]:
        started = now - timedelta(days=age_days, minutes=10)
        # The recording's last event is what counts: it ends age_days ago.
        await insert_session(
            engine,
            project,
            [Chunk(0, [0], full_snapshot=True), Chunk(1, [600_000])],
            session_id=name,
            started_at=started,
        )
        await insert_event(engine, project["id"], distinct_id="v", session_id=name, occurred_at=started)
    async with engine.begin() as connection:
        for age_days in (8, 1):
            await connection.execute(
                text("INSERT INTO ingested_events (project_id, event_uuid, received_at) VALUES (:p, :u, :t)"),
                {"p": project["id"], "u": uuid.uuid4(), "t": now - timedelta(days=age_days)},
            )


async def test_retention_removes_what_each_projects_setting_no_longer_allows(
    admin_env: None, admin_engine: AsyncEngine, project: dict[str, Any], other_project: dict[str, Any]
) -> None:
    now = datetime.now(UTC)
    await _data_around_thirty_days(admin_engine, project, now)
    await _data_around_thirty_days(admin_engine, other_project, now)

    result = await sightline("project", "set-retention", "--project", str(project["id"]), "--days", "30")
    assert json.loads(result.output) == {"id": project["id"], "retentionDays": 30}

    applied = await sightline(
        "retention", "apply", "--project", str(project["id"]), "--project", str(other_project["id"])
    )
    report = json.loads(applied.output)
    ignored = ("droppedPartitions", "skippedPartitions", "otherProjectsDeletedRows")
    assert {key: report[key] for key in report if key not in ignored} == {
        "deletedRows": {
            "events": 1,
            "query_sessions": 1,  # the query service's row of the 31-day-old visit
            "event_session_urls": 1,  # its URL, which the session list searches
            "replay_sessions": 1,
            "replay_chunks": 2,
            "ingested_events": 2,
            "query_rollup_visits": 0,  # no rollups were built here
            "query_rollup_pages": 0,
            "query_rollup_entry_pages": 0,
            "query_rollup_exit_pages": 0,
            "query_rollup_hours": 0,
            "query_rollup_domains": 0,
            "query_rollup_event_names": 0,
            "query_rollup_event_pages": 0,
            "query_rollup_entry_event_pages": 0,
            "query_rollup_page_weeks": 0,
            "query_rollup_weeks": 0,
            "query_rollup_retention": 0,
            "query_rollup_retention_weeks": 0,
            **dict.fromkeys(INCREMENT_TABLES, 0),
            "query_rollup_days": 1,  # the 31-day-old day's marker (its event's insert made it)
        },
        "rollupDaysToRebuild": 0,
        "deletedEvents": 1,
        "deletedSessions": 1,
        "deletedChunks": 2,
        "prunedIdempotencyKeys": 2,  # the 8-day-old key of each project
        "projects": 2,
    }
    assert await project_rows(admin_engine, project["id"], RETAINED_ROWS) == {
        "events": ["recent"],
        "sessions": ["recent"],
        "chunks": ["recent"],
        "idempotencyKeys": [1],
        "querySessions": ["recent"],
        "sessionUrls": ["recent"],
    }
    # The other project keeps the default 395 days: only its old idempotency key went.
    assert await project_rows(admin_engine, other_project["id"], RETAINED_ROWS) == {
        "events": ["old", "recent"],
        "sessions": ["old", "recent"],
        "chunks": ["old", "recent"],
        "idempotencyKeys": [1],
        "querySessions": ["old", "recent"],
        "sessionUrls": ["old", "recent"],
    }

    again = json.loads((await sightline("retention", "apply", "--project", str(project["id"]))).output)
    assert (again["deletedEvents"], again["deletedSessions"], again["deletedChunks"]) == (0, 0, 0)


async def test_a_day_past_every_projects_retention_is_dropped_as_a_whole_partition(
    admin_env: None, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    # A day long past the longest retention any project can have here (the default 395).
    old_day = date(2003, 3, 3)
    async with admin_engine.begin() as connection:
        await partition_repository.ensure_event_partitions(connection, old_day, old_day)
    await insert_event(
        admin_engine,
        project["id"],
        distinct_id="v",
        session_id="ancient",
        occurred_at=datetime(2003, 3, 3, 12, tzinfo=UTC),
    )
    await insert_event(admin_engine, project["id"], distinct_id="v", session_id="today", occurred_at=datetime.now(UTC))

    report = json.loads((await sightline("retention", "apply", "--project", str(project["id"]))).output)

    assert "events_p20030303" in report["droppedPartitions"]
    # Its row went with the table, not through a DELETE.
    assert report["deletedEvents"] == 0
    async with admin_engine.connect() as connection:
        partitions = await partition_repository.existing_event_partitions(connection)
    assert "events_p20030303" not in partitions
    today = partition_repository.partition_name(datetime.now(UTC).date())
    assert {today, "events_default"} <= partitions
    rows = await project_rows(admin_engine, project["id"], RETAINED_ROWS)
    assert (rows["events"], rows["sessionUrls"]) == (["today"], ["today"])


async def test_a_session_across_the_cutoff_keeps_only_the_urls_of_its_kept_events(
    admin_env: None, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    """The session list's URL search: a URL first visited before the cutoff and again after it
    stays findable, with its kept visit's time; one visited only before the cutoff goes."""
    now = datetime.now(UTC).replace(microsecond=0)
    cutoff = now - timedelta(days=30)
    visits = [
        ("/again", cutoff - timedelta(hours=1)),
        ("/before", cutoff - timedelta(minutes=50)),
        ("/again", cutoff + timedelta(minutes=20)),
        ("/after", cutoff + timedelta(minutes=30)),
    ]
    for path, occurred_at in visits:
        await insert_event(
            admin_engine,
            project["id"],
            distinct_id="v",
            session_id="across",
            occurred_at=occurred_at,
            url=f"https://example.com{path}",
            path=path,
        )
    await insert_event(
        admin_engine, project["id"], distinct_id="v", session_id="gone", occurred_at=cutoff - timedelta(days=1)
    )
    await sightline("project", "set-retention", "--project", str(project["id"]), "--days", "30")

    report = json.loads((await sightline("retention", "apply", "--project", str(project["id"]))).output)

    # /again, /before and the other session's / went; /again came back from its kept event.
    assert report["deletedRows"]["event_session_urls"] == 2
    kept = await session_urls(admin_engine, project["id"])
    # The cutoff is the command's own now less 30 days, a few seconds after this test's.
    assert [(row[0], row[2]) for row in kept] == [("across", "/after"), ("across", "/again")]
    assert [row[3] for row in kept] == [cutoff + timedelta(minutes=30), cutoff + timedelta(minutes=20)]


async def test_set_retention_refuses_an_unknown_project_and_a_non_positive_number(admin_env: None) -> None:
    unknown = await asyncio.to_thread(
        CliRunner().invoke, cli, ["project", "set-retention", "--project", "987654321", "--days", "30"]
    )
    assert unknown.exit_code == 1
    assert "no project with id 987654321" in unknown.output
    zero = await asyncio.to_thread(
        CliRunner().invoke, cli, ["project", "set-retention", "--project", "1", "--days", "0"]
    )
    assert zero.exit_code == 2


ROLLUP_TABLES = (*DAY_ROLLUP_TABLES, *WEEK_ROLLUP_TABLES, *RETENTION_ROLLUP_TABLES)


async def _rollup_counts(engine: AsyncEngine, project_id: int) -> dict[str, int]:
    async with engine.connect() as connection:
        counts = {}
        for table_name in (*ROLLUP_TABLES, "query_rollup_days"):
            result = await connection.execute(
                text(f"SELECT count(*) FROM {table_name} WHERE project_id = :p"), {"p": project_id}
            )
            counts[table_name] = result.scalar_one()
        return counts


async def test_retention_past_every_projects_window_leaves_no_rollups_and_no_figures(
    admin_env: None, db: DatabaseHarness, engine: AsyncEngine, admin_engine: AsyncEngine
) -> None:
    # Monday 10 and Tuesday 11 May 2004 (Berlin), long past the default 395 days of every
    # project here; their week is complete, so weekly rows are built too.
    project = await new_project(db)
    project_id = int(project["id"])
    async with admin_engine.begin() as connection:
        await partition_repository.ensure_event_partitions(connection, date(2004, 5, 9), date(2004, 5, 11))
    await insert_events(
        admin_engine,
        project_id,
        [
            QueryEvent("v1", "s1", berlin("2004-05-10T10:00:00"), "/private?email=a@example.com"),
            QueryEvent("v2", "s2", berlin("2004-05-11T10:00:00"), "/"),
        ],
    )
    await build_rollups(engine, project)
    built = await _rollup_counts(admin_engine, project_id)
    assert (built["query_rollup_days"], built["query_rollup_weeks"]) == (2, 1)
    assert min(built[name] for name in ROLLUP_TABLES) > 0

    report = json.loads((await sightline("retention", "apply", "--project", str(project_id))).output)

    # Berlin's May 10 begins on May 9 in UTC: three UTC partitions held the two local days.
    assert {"events_p20040509", "events_p20040510", "events_p20040511"} <= set(report["droppedPartitions"])
    deleted = report["deletedRows"]
    assert {name: deleted[name] for name in (*ROLLUP_TABLES, "query_rollup_days")} == {**built, "query_rollup_days": 2}
    assert await _rollup_counts(admin_engine, project_id) == dict.fromkeys((*ROLLUP_TABLES, "query_rollup_days"), 0)

    settings = QuerySettings(rollup_max_staleness_s=3600, rollup_interval_s=0)
    async with AsyncTestClient(create_query_app(db.database, query_settings=settings)) as client:
        for dimension in ("time:day", "page"):
            response = await client.post(
                "/v1/query",
                json={
                    "period": "custom",
                    "date_from": "2004-05-10",
                    "date_to": "2004-05-16",
                    "metrics": ["visitors", "pageviews"],
                    "dimensions": [dimension],
                },
                headers={"Authorization": f"Bearer {project['secretKey']}"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["results"] == []
