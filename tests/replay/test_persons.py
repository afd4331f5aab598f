"""DELETE /v1/persons/{distinctId}: a person's events and recordings go, nobody else's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.rollup_purge_repository import INCREMENT_TABLES, SESSION_CUBE_TABLES
from tests.replay.conftest import T0, Chunk, StoreSession, auth, insert_event, insert_session, project_rows

# What a person's erasure touches, per project.
PERSON_ROWS = {
    "events": "SELECT distinct_id FROM events WHERE project_id = :p ORDER BY distinct_id",
    "sessions": "SELECT session_id FROM replay_sessions WHERE project_id = :p ORDER BY session_id",
    "chunks": "SELECT session_id, seq FROM replay_chunks WHERE project_id = :p ORDER BY session_id, seq",
    "sessionUrls": "SELECT distinct_id, session_id FROM event_session_urls WHERE project_id = :p ORDER BY 1, 2",
}


async def test_deleting_a_person_removes_their_events_and_recordings_only(
    client: AsyncTestClient[Any],
    store: StoreSession,
    admin_engine: AsyncEngine,
    project: dict[str, Any],
    other_project: dict[str, Any],
) -> None:
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    # alice: one recording under her id (2 chunks); one begun while still anonymous ("anon-7")
    # whose second chunk was sent after she was identified; events on a day with a partition
    # and on one far outside every partition (events_default). One of her events names bob's
    # session (anyone with the public key can post that): bob's recording is not hers.
    await store([Chunk(0, [0], full_snapshot=True), Chunk(1, [5_000])], session_id="alice-1", distinct_id="alice")
    await store(
        [Chunk(0, [0], full_snapshot=True), Chunk(1, [5_000], distinct_id="alice")],
        session_id="anon-session",
        distinct_id="anon-7",
    )
    await store([Chunk(0, [0], full_snapshot=True)], session_id="bob-1", distinct_id="bob")
    for occurred_at, session_id in [(today, "alice-1"), (today, "bob-1"), (T0 - timedelta(days=900), "x")]:
        await insert_event(
            admin_engine, project["id"], distinct_id="alice", session_id=session_id, occurred_at=occurred_at
        )
    # bob, in the same project, and alice in another project, stay.
    await insert_event(admin_engine, project["id"], distinct_id="bob", session_id="bob-1", occurred_at=today)
    await insert_session(
        admin_engine, other_project, [Chunk(0, [0], full_snapshot=True)], session_id="alice-1", distinct_id="alice"
    )
    await insert_event(admin_engine, other_project["id"], distinct_id="alice", session_id="alice-1", occurred_at=today)

    response = await client.delete("/v1/persons/alice")
    assert response.status_code == 200, response.text
    body = response.json()
    assert {key: body[key] for key in ("distinctId", "deletedEvents", "deletedSessions", "deletedChunks")} == {
        "distinctId": "alice",
        "deletedEvents": 3,
        "deletedSessions": 2,
        "deletedChunks": 4,
    }
    assert body["deletedRows"] == {
        "events": 3,
        "ingested_events": 0,  # inserted with SQL here, so no client uuids were claimed
        "replay_sessions": 2,
        "replay_chunks": 4,
        "event_session_urls": 3,  # the URL of each session alice's events named, under her id
        "query_rollup_visits": 0,  # no rollups were built in this test
        "query_rollup_pages": 0,
        **dict.fromkeys(SESSION_CUBE_TABLES, 0),
        "query_rollup_page_weeks": 0,
        "query_rollup_weeks": 0,
        "query_rollup_retention": 0,
        "query_rollup_retention_weeks": 0,
        **dict.fromkeys(INCREMENT_TABLES, 0),
        # Today keeps bob's event, so its marker stays (to rebuild); the day 900 days back
        # loses its only event and its marker.
        "query_rollup_days": 1,
    }
    assert body["rollupDaysToRebuild"] == 1

    assert await project_rows(admin_engine, project["id"], PERSON_ROWS) == {
        "events": ["bob"],
        "sessions": ["bob-1"],
        "chunks": [("bob-1", 0)],
        "sessionUrls": [("bob", "bob-1")],
    }
    assert await project_rows(admin_engine, other_project["id"], PERSON_ROWS) == {
        "events": ["alice"],
        "sessions": ["alice-1"],
        "chunks": [("alice-1", 0)],
        "sessionUrls": [("alice", "alice-1")],
    }

    again = (await client.delete("/v1/persons/alice")).json()
    assert (again["deletedEvents"], again["deletedSessions"], again["deletedChunks"]) == (0, 0, 0)
    assert set(again["deletedRows"].values()) == {0}


async def test_distinct_ids_with_url_characters_are_deleted_by_their_exact_value(
    client: AsyncTestClient[Any], store: StoreSession
) -> None:
    await store([Chunk(0, [0], full_snapshot=True)], session_id="mail-1", distinct_id="a.b+c@example.com")
    await store([Chunk(0, [0], full_snapshot=True)], session_id="mail-2", distinct_id="a.b c@example.com")
    response = await client.delete("/v1/persons/a.b%2Bc%40example.com")
    assert response.json()["deletedSessions"] == 1
    remaining = (await client.get("/v1/sessions")).json()["sessions"]
    assert [s["id"] for s in remaining] == ["mail-2"]


async def test_malformed_distinct_id_is_422(client: AsyncTestClient[Any]) -> None:
    response = await client.delete("/v1/persons/" + "x" * 201)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "distinctId"


async def test_another_projects_key_deletes_nothing_here(
    client: AsyncTestClient[Any], store: StoreSession, other_project: dict[str, Any]
) -> None:
    await store([Chunk(0, [0], full_snapshot=True)], session_id="alice-1", distinct_id="alice")
    response = await client.delete("/v1/persons/alice", headers=auth(other_project))
    assert response.json()["deletedSessions"] == 0
    assert [s["id"] for s in (await client.get("/v1/sessions")).json()["sessions"]] == ["alice-1"]
