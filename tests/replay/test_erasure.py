"""Erasure leaves nothing behind: events, idempotency keys, recordings, rollups (issue 14)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import asyncpg_connection
from services.common.rollup_purge_repository import DAY_ROLLUP_TABLES, INCREMENT_TABLES, RETENTION_ROLLUP_TABLES
from services.ingest.repository import write_batch
from services.query.app import create_app as create_query_app
from services.query.settings import QuerySettings
from services.replay.erasure import erase_person
from tests.harness import DatabaseHarness
from tests.query.conftest import Event, berlin, build_rollups, insert_events, query, table
from tests.replay.conftest import T0, Chunk, auth, insert_session, record_session_urls, session_urls
from tests.rows import chunk_row


@pytest.fixture
async def query_client(db: DatabaseHarness) -> AsyncIterator[AsyncTestClient[Any]]:
    # Rollups an hour stale are still served: only marking the days unusable (or deleting their
    # rows) makes the erased person's visits leave the figures before the refresher runs.
    settings = QuerySettings(rollup_max_staleness_s=3600, rollup_interval_s=0)
    async with AsyncTestClient(create_query_app(db.database, query_settings=settings)) as test_client:
        yield test_client


async def _rows_for(engine: AsyncEngine, project_id: int, distinct_id: str, claimed: list[Any]) -> dict[str, int]:
    async with engine.connect() as connection:
        counts = {}
        for table_name in ("events", "replay_sessions", "replay_chunks"):
            result = await connection.execute(
                text(f"SELECT count(*) FROM {table_name} WHERE project_id = :p AND distinct_id = :d"),
                {"p": project_id, "d": distinct_id},
            )
            counts[table_name] = result.scalar_one()
        keys = await connection.execute(
            text("SELECT count(*) FROM ingested_events WHERE project_id = :p AND event_uuid = ANY(:u)"),
            {"p": project_id, "u": claimed},
        )
        counts["ingested_events"] = keys.scalar_one()
        return counts


async def _rollup_rows(engine: AsyncEngine, project_id: int) -> dict[str, int]:
    async with engine.connect() as connection:
        counts = {}
        for table_name in (*DAY_ROLLUP_TABLES, "query_rollup_page_weeks", *RETENTION_ROLLUP_TABLES, *INCREMENT_TABLES):
            result = await connection.execute(
                text(f"SELECT count(*) > 0 FROM {table_name} WHERE project_id = :p"), {"p": project_id}
            )
            counts[table_name] = int(result.scalar_one())
        return counts


async def _query_sessions(engine: AsyncEngine, project_id: int) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT session_id, distinct_id, pageviews FROM query_sessions WHERE project_id = :p ORDER BY 1"),
            {"p": project_id},
        )
        return [tuple(row) for row in result]


async def test_erasure_removes_every_row_of_the_person_and_their_share_of_the_rollups(
    client: AsyncTestClient[Any],
    query_client: AsyncTestClient[Any],
    engine: AsyncEngine,
    admin_engine: AsyncEngine,
    project: dict[str, Any],
) -> None:
    project_id = int(project["id"])
    # Berlin days Jan 12-14 2026 (Monday to Wednesday). zed (the person) has events on all three days;
    # bob on all three; carol on Jan 13. One of zed's events names bob's session (a session counts
    # one visitor, its smallest distinct id: bob, so zed's event only adds a pageview there).
    events = [
        Event("zed", "s-zed", berlin("2026-01-12T10:00:00"), "/"),
        Event("zed", "s-zed", berlin("2026-01-13T10:00:00"), "/pricing"),
        Event("zed", "s-bob", berlin("2026-01-13T10:05:00"), "/pricing"),
        Event("zed", "s-zed", berlin("2026-01-14T10:00:00"), "/"),
        Event("bob", "s-bob", berlin("2026-01-12T11:00:00"), "/"),
        Event("bob", "s-bob", berlin("2026-01-13T11:00:00"), "/"),
        Event("bob", "s-bob", berlin("2026-01-14T11:00:00"), "/blog"),
        Event("carol", "s-carol", berlin("2026-01-13T12:00:00"), "/"),
    ]
    await insert_events(admin_engine, project_id, events)
    await record_session_urls(admin_engine, project_id)
    # Ingest claims every client uuid in ingested_events.
    async with admin_engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO ingested_events (project_id, event_uuid) VALUES (:p, :u)"),
            [{"p": project_id, "u": event.event_uuid} for event in events],
        )
    zeds_uuids = [event.event_uuid for event in events if event.distinct_id == "zed"]
    # zed's recording was begun while she was anonymous; its second chunk came after she was
    # identified. bob's recording is his own, even though one of zed's events names it.
    await insert_session(
        admin_engine,
        project,
        [Chunk(0, [0], full_snapshot=True), Chunk(1, [5_000], distinct_id="zed")],
        session_id="s-zed-recording",
        distinct_id="anon-9",
        started_at=berlin("2026-01-13T10:00:00"),
    )
    await insert_session(
        admin_engine,
        project,
        [Chunk(0, [0], full_snapshot=True), Chunk(1, [3_000])],
        session_id="s-bob",
        distinct_id="bob",
        started_at=berlin("2026-01-13T11:00:00"),
    )
    # One query session per session id; a session's visitor is its smallest distinct id.
    assert await _query_sessions(admin_engine, project_id) == [
        ("s-bob", "bob", 4),
        ("s-carol", "carol", 1),
        ("s-zed", "zed", 3),
    ]
    # A page goal, so the goal pairs (migration 1000) hold zed too: her /pricing on Jan 13.
    goal = await query_client.post("/v1/goals", json={"type": "page", "value": "/pricing"}, headers=auth(project))
    assert goal.status_code == 201, goal.text
    await build_rollups(engine, project)
    assert await _rollup_rows(admin_engine, project_id) == {
        "query_rollup_visits": 1,
        "query_rollup_pages": 1,
        "query_rollup_entry_pages": 1,
        "query_rollup_exit_pages": 1,
        "query_rollup_hours": 1,
        "query_rollup_domains": 1,
        "query_rollup_event_names": 1,
        "query_rollup_event_pages": 1,
        "query_rollup_entry_event_pages": 1,
        "query_rollup_page_weeks": 1,  # the week of Jan 12 is complete
        "query_rollup_retention": 1,
        "query_rollup_retention_weeks": 1,
        "query_rollup_sessions_folded": 1,
        "query_rollup_session_days": 1,
        "query_rollup_exit_items": 1,
        "query_rollup_goal_pairs": 1,
        "query_rollup_goal_pair_days": 1,
    }

    before = await query(query_client, project, metrics=["visitors", "pageviews"], dimensions=["time:day"])
    assert before["meta"]["source"] == "rollups"
    assert table(before) == [["2026-01-12", 2, 2], ["2026-01-13", 3, 4], ["2026-01-14", 2, 2]]
    # Retention counts zed too: zed and bob first seen on Jan 12, carol on Jan 13.
    cohorts = await query_client.post(
        "/v1/retention",
        json={"period": "custom", "date_from": "2026-01-12", "date_to": "2026-01-14"},
        headers=auth(project),
    )
    assert (cohorts.json()["meta"]["source"], cohorts.json()["cohorts"][0]["visitors"]) == ("rollups", 3)

    response = await client.delete("/v1/persons/zed")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "distinctId": "zed",
        "deletedEvents": 4,
        "deletedSessions": 1,
        "deletedChunks": 2,
        "deletedRows": {
            "events": 4,
            "ingested_events": 4,
            "replay_sessions": 1,
            "replay_chunks": 2,
            # zed's URLs: / and /pricing in her session, /pricing in bob's.
            "event_session_urls": 3,
            # Every row of the three days and of their week: the sketches hold zed.
            "query_rollup_visits": response.json()["deletedRows"]["query_rollup_visits"],
            "query_rollup_pages": response.json()["deletedRows"]["query_rollup_pages"],
            "query_rollup_entry_pages": response.json()["deletedRows"]["query_rollup_entry_pages"],
            "query_rollup_exit_pages": response.json()["deletedRows"]["query_rollup_exit_pages"],
            "query_rollup_hours": response.json()["deletedRows"]["query_rollup_hours"],
            "query_rollup_domains": response.json()["deletedRows"]["query_rollup_domains"],
            "query_rollup_event_names": response.json()["deletedRows"]["query_rollup_event_names"],
            "query_rollup_event_pages": response.json()["deletedRows"]["query_rollup_event_pages"],
            "query_rollup_entry_event_pages": response.json()["deletedRows"]["query_rollup_entry_event_pages"],
            "query_rollup_page_weeks": response.json()["deletedRows"]["query_rollup_page_weeks"],
            "query_rollup_weeks": 1,
            # Retention counts of (active day, first-seen day): (Jan 12, Jan 12) holds zed and bob,
            # (Jan 13, Jan 13) carol; both go with zed's days, and the week's stamp.
            "query_rollup_retention": 2,
            "query_rollup_retention_weeks": 1,
            "query_rollup_sessions_folded": response.json()["deletedRows"]["query_rollup_sessions_folded"],
            "query_rollup_session_days": response.json()["deletedRows"]["query_rollup_session_days"],
            # The exit-page items of those days (their sketches hold zed; migration 0900).
            "query_rollup_exit_items": response.json()["deletedRows"]["query_rollup_exit_items"],
            # The goal pairs of those days (their sketches hold zed; migration 1000), their markers.
            "query_rollup_goal_pairs": response.json()["deletedRows"]["query_rollup_goal_pairs"],
            "query_rollup_goal_pair_days": response.json()["deletedRows"]["query_rollup_goal_pair_days"],
            "query_rollup_days": 0,  # bob still has events on each day
        },
        "rollupDaysToRebuild": 3,
    }
    assert min(response.json()["deletedRows"][name] for name in (*DAY_ROLLUP_TABLES, *INCREMENT_TABLES)) > 0

    assert await _rows_for(admin_engine, project_id, "zed", zeds_uuids) == {
        "events": 0,
        "replay_sessions": 0,
        "replay_chunks": 0,
        "ingested_events": 0,
    }
    # No rollup row of the project survives: they all covered zed's days or her week.
    assert await _rollup_rows(admin_engine, project_id) == {
        "query_rollup_visits": 0,
        "query_rollup_pages": 0,
        "query_rollup_entry_pages": 0,
        "query_rollup_exit_pages": 0,
        "query_rollup_hours": 0,
        "query_rollup_domains": 0,
        "query_rollup_event_names": 0,
        "query_rollup_event_pages": 0,
        "query_rollup_entry_event_pages": 0,
        "query_rollup_page_weeks": 0,
        "query_rollup_retention": 0,
        "query_rollup_retention_weeks": 0,
        # The refresher's per-visitor counts and session copies of those days (zed's included).
        "query_rollup_sessions_folded": 0,
        "query_rollup_session_days": 0,
        "query_rollup_exit_items": 0,
        "query_rollup_goal_pairs": 0,
        "query_rollup_goal_pair_days": 0,
    }
    # The session list's URL search no longer finds zed: bob's session keeps only his own URLs.
    assert [row[:3] for row in await session_urls(admin_engine, project_id)] == [
        ("s-bob", "bob", "/"),
        ("s-bob", "bob", "/blog"),
        ("s-carol", "carol", "/"),
    ]
    # zed's session is gone; bob's, which held one of her events, is recomputed from his own.
    assert await _query_sessions(admin_engine, project_id) == [("s-bob", "bob", 3), ("s-carol", "carol", 1)]
    # bob's recording is intact, the one begun as anon-9 is gone whole.
    sessions = (await client.get("/v1/sessions", headers=auth(project))).json()["sessions"]
    assert [(s["id"], s["chunkCount"]) for s in sessions] == [("s-bob", 2)]
    async with admin_engine.connect() as connection:
        chunks = await connection.execute(
            text("SELECT session_id, seq FROM replay_chunks WHERE project_id = :p ORDER BY 1, 2"), {"p": project_id}
        )
        assert [tuple(row) for row in chunks] == [("s-bob", 0), ("s-bob", 1)]

    # Visitors fall by exactly one on each day, at once (from raw events, the rollups being unusable).
    after = await query(query_client, project, metrics=["visitors", "pageviews"], dimensions=["time:day"])
    assert after["meta"]["source"] == "events"
    assert table(after) == [["2026-01-12", 1, 1], ["2026-01-13", 2, 2], ["2026-01-14", 1, 1]]
    cohorts = await query_client.post(
        "/v1/retention",
        json={"period": "custom", "date_from": "2026-01-12", "date_to": "2026-01-14"},
        headers=auth(project),
    )
    assert (cohorts.json()["meta"]["source"], cohorts.json()["cohorts"][0]["visitors"]) == ("events", 2)
    # Rebuilt without zed, the rollup answers again.
    await build_rollups(engine, project)
    cohorts = await query_client.post(
        "/v1/retention",
        json={"period": "custom", "date_from": "2026-01-12", "date_to": "2026-01-14"},
        headers=auth(project),
    )
    assert (cohorts.json()["meta"]["source"], cohorts.json()["cohorts"][0]["visitors"]) == ("rollups", 2)

    # Rebuilt by the refresher, the rollups give the same figures.
    await build_rollups(engine, project)
    rebuilt = await query(query_client, project, metrics=["visitors", "pageviews"], dimensions=["time:day"])
    assert rebuilt["meta"]["source"] == "rollups"
    assert table(rebuilt) == table(after)


async def test_a_chunk_arriving_during_an_erasure_is_never_left_without_its_session(
    engine: AsyncEngine, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    project_id = int(project["id"])
    await insert_session(admin_engine, project, [Chunk(0, [0], full_snapshot=True)], session_id="s", distinct_id="zed")
    late_chunk = chunk_row(project_id, "s", 1, first_timestamp=T0, last_timestamp=T0, distinct_id="zed", page_count=0)
    async with engine.connect() as erasing, engine.connect() as ingesting:
        async with erasing.begin():
            deletion = await erase_person(erasing, project_id, "zed")
            # The erasure holds the session's row: ingest's batch stores its chunk, then waits.
            write = asyncio.create_task(write_batch(await asyncpg_connection(ingesting), [], [late_chunk]))
            await asyncio.sleep(0.5)
            assert not write.done()
        await write
    assert (deletion.deleted_sessions, deletion.deleted_chunks) == (1, 1)
    async with admin_engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT c.seq, s.chunk_count FROM replay_chunks c"
                " LEFT JOIN replay_sessions s USING (project_id, session_id) WHERE c.project_id = :p"
            ),
            {"p": project_id},
        )
        # The late chunk came after the erasure committed: it is stored with a fresh session row.
        assert [tuple(row) for row in rows] == [(1, 1)]
