"""Replay rows written directly with SQL, exactly as the ingest service stores them.

A chunk's ``data`` is the tracker's request body: gzip of
``{"projectKey", "sessionId", "distinctId", "seq", "events": [rrweb events]}``.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.replay.app import create_app
from tests.harness import DatabaseHarness

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

FULL_SNAPSHOT, INCREMENTAL, META = 2, 3, 4


@dataclass
class Chunk:
    """A chunk as a tracker sends it: rrweb events at these ms offsets from the session start."""

    seq: int
    offsets_ms: Sequence[int]
    full_snapshot: bool = False
    content_encoding: str = "gzip"
    # The id the tracker sent this chunk under; the session's id when None.
    distinct_id: str | None = None


@dataclass
class StoredChunk:
    seq: int
    body: dict[str, Any]
    data: bytes
    content_encoding: str


@dataclass
class StoredSession:
    session_id: str
    started_at: datetime
    ended_at: datetime
    chunks: dict[int, StoredChunk] = field(default_factory=dict)


def rrweb_events(chunk: Chunk, started_at: datetime) -> list[dict[str, Any]]:
    base_ms = int(started_at.timestamp() * 1000)
    events: list[dict[str, Any]] = []
    for index, offset in enumerate(chunk.offsets_ms):
        timestamp = base_ms + offset
        if chunk.full_snapshot and index == 0:
            events.append(
                {"type": META, "data": {"href": "https://example.com/", "width": 1280}, "timestamp": timestamp}
            )
            events.append(
                {"type": FULL_SNAPSHOT, "data": {"node": {"type": 0, "childNodes": []}}, "timestamp": timestamp}
            )
        else:
            events.append({"type": INCREMENTAL, "data": {"source": 1, "x": index, "y": offset}, "timestamp": timestamp})
    return events


async def insert_session(
    engine: AsyncEngine,
    project: dict[str, Any],
    chunks: Sequence[Chunk],
    *,
    session_id: str | None = None,
    distinct_id: str = "visitor-1",
    started_at: datetime = T0,
    insert_order: Sequence[int] | None = None,
    first_url: str | None = "https://example.com/",
    country: str | None = "DE",
    browser: str | None = "Firefox",
    os: str | None = "Linux",
    device_type: str | None = "desktop",
    page_count: int = 1,
    click_count: int = 0,
    active_ms: int = 0,
) -> StoredSession:
    session_id = session_id or f"s-{uuid.uuid4().hex[:12]}"
    stored: dict[int, StoredChunk] = {}
    for chunk in chunks:
        body = {
            "projectKey": project["publicKey"],
            "sessionId": session_id,
            "distinctId": chunk.distinct_id or distinct_id,
            "seq": chunk.seq,
            "events": rrweb_events(chunk, started_at),
        }
        raw = json.dumps(body).encode()
        data = gzip.compress(raw) if chunk.content_encoding == "gzip" else raw
        stored[chunk.seq] = StoredChunk(chunk.seq, body, data, chunk.content_encoding)
    # No chunks: a session row alone (as a retention or erasure run racing ingest can leave).
    all_offsets = [offset for chunk in chunks for offset in chunk.offsets_ms] or [0]
    session = StoredSession(
        session_id=session_id,
        started_at=started_at + timedelta(milliseconds=min(all_offsets)),
        ended_at=started_at + timedelta(milliseconds=max(all_offsets)),
        chunks=stored,
    )
    by_seq = {chunk.seq: chunk for chunk in chunks}
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO replay_sessions (project_id, session_id, distinct_id, started_at, ended_at, active_ms,"
                " click_count, page_count, first_url, country, browser, os, device_type, chunk_count, total_bytes)"
                " VALUES (:project_id, :session_id, :distinct_id, :started_at, :ended_at, :active_ms, :click_count,"
                " :page_count, :first_url, :country, :browser, :os, :device_type, :chunk_count, :total_bytes)"
            ),
            {
                "project_id": project["id"],
                "session_id": session_id,
                "distinct_id": distinct_id,
                "started_at": session.started_at,
                "ended_at": session.ended_at,
                "active_ms": active_ms,
                "click_count": click_count,
                "page_count": page_count,
                "first_url": first_url,
                "country": country,
                "browser": browser,
                "os": os,
                "device_type": device_type,
                "chunk_count": len(chunks),
                "total_bytes": sum(len(c.data) for c in stored.values()),
            },
        )
        # Chunks may arrive (and be stored) out of seq order.
        for seq in insert_order if insert_order is not None else [chunk.seq for chunk in chunks]:
            chunk = by_seq[seq]
            await connection.execute(
                text(
                    "INSERT INTO replay_chunks (project_id, session_id, seq, first_timestamp, last_timestamp,"
                    " event_count, has_full_snapshot, content_encoding, byte_size, data, distinct_id)"
                    " VALUES (:project_id, :session_id, :seq, :first, :last, :count, :snapshot, :encoding,"
                    " :size, :data, :distinct_id)"
                ),
                {
                    "project_id": project["id"],
                    "session_id": session_id,
                    "seq": seq,
                    "first": started_at + timedelta(milliseconds=min(chunk.offsets_ms)),
                    "last": started_at + timedelta(milliseconds=max(chunk.offsets_ms)),
                    "count": len(stored[seq].body["events"]),
                    "snapshot": chunk.full_snapshot,
                    "encoding": chunk.content_encoding,
                    "size": len(stored[seq].data),
                    "data": stored[seq].data,
                    "distinct_id": chunk.distinct_id or distinct_id,
                },
            )
    return session


async def insert_event(
    engine: AsyncEngine,
    project_id: int,
    *,
    distinct_id: str,
    session_id: str,
    occurred_at: datetime,
    url: str = "https://example.com/",
    name: str = "pageview",
    path: str = "/",
    referrer: str | None = None,
    referrer_domain: str | None = None,
    utm: Mapping[str, str] | None = None,
) -> None:
    utm = utm or {}
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url,"
                " domain, path, referrer, referrer_domain, utm_source, utm_medium, utm_campaign)"
                " VALUES (:project_id, :occurred_at, :uuid, :name, :distinct_id, :session_id, :url,"
                " 'example.com', :path, :referrer, :referrer_domain, :utm_source, :utm_medium, :utm_campaign)"
            ),
            {
                "project_id": project_id,
                "occurred_at": occurred_at,
                "uuid": uuid.uuid4(),
                "name": name,
                "distinct_id": distinct_id,
                "session_id": session_id,
                "url": url,
                "path": path,
                "referrer": referrer,
                "referrer_domain": referrer_domain,
                "utm_source": utm.get("source"),
                "utm_medium": utm.get("medium"),
                "utm_campaign": utm.get("campaign"),
            },
        )
        # As the ingest writer records it (services/ingest/repository.py): the session's URL, once.
        await connection.execute(
            text(
                "INSERT INTO event_session_urls (project_id, session_id, distinct_id, url_hash, url, path, first_seen)"
                " VALUES (:project_id, :session_id, :distinct_id, md5(:url)::uuid, :url, :path, :occurred_at)"
                " ON CONFLICT (project_id, session_id, distinct_id, url_hash)"
                " DO UPDATE SET first_seen = LEAST(event_session_urls.first_seen, EXCLUDED.first_seen)"
            ),
            {
                "project_id": project_id,
                "session_id": session_id,
                "distinct_id": distinct_id,
                "url": url,
                "path": path,
                "occurred_at": occurred_at,
            },
        )


async def record_session_urls(engine: AsyncEngine, project_id: int) -> None:
    """What the ingest writer records of events inserted directly: each session's URLs, once per id."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO event_session_urls (project_id, session_id, distinct_id, url_hash, url, path, first_seen)"
                " SELECT project_id, session_id, distinct_id, md5(url)::uuid, min(url), min(path), min(occurred_at)"
                " FROM events WHERE project_id = :project_id GROUP BY project_id, session_id, distinct_id, md5(url)"
                " ON CONFLICT DO NOTHING"
            ),
            {"project_id": project_id},
        )


async def session_urls(engine: AsyncEngine, project_id: int) -> list[tuple[str, str, str, datetime]]:
    """(session_id, distinct_id, path, first_seen) of every recorded session URL, in that order."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT session_id, distinct_id, path, first_seen FROM event_session_urls"
                " WHERE project_id = :project_id ORDER BY 1, 2, 3"
            ),
            {"project_id": project_id},
        )
        return [(row[0], row[1], row[2], row[3]) for row in result]


async def project_rows(engine: AsyncEngine, project_id: int, queries: Mapping[str, str]) -> dict[str, list[Any]]:
    """Each named query's rows (the project bound as ``:p``): values for one column, tuples for several."""
    rows: dict[str, list[Any]] = {}
    async with engine.connect() as connection:
        for name, query in queries.items():
            result = await connection.execute(text(query), {"p": project_id})
            rows[name] = [row[0] if len(row) == 1 else tuple(row) for row in result]
    return rows


StoreSession = Callable[..., Awaitable[StoredSession]]


@pytest.fixture
def store(admin_engine: AsyncEngine, project: dict[str, Any]) -> StoreSession:
    """Stores a session in the test's project: ``await store([Chunk(...), ...], **options)``."""

    async def _store(chunks: Sequence[Chunk], **options: Any) -> StoredSession:
        return await insert_session(admin_engine, project, chunks, **options)

    return _store


def auth(project: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {project['secretKey']}"}


@pytest.fixture
async def client(db: DatabaseHarness, project: dict[str, Any]) -> AsyncIterator[AsyncTestClient[Any]]:
    """The replay app through PgBouncer, sending the test project's secret key."""
    async with AsyncTestClient(create_app(db.database)) as test_client:
        test_client.headers.update(auth(project))
        yield test_client


@pytest.fixture
async def other_project(db: DatabaseHarness) -> dict[str, Any]:
    """A second project, to show that one key never reaches the other's rows."""
    return await admin.create_project(
        db.admin, name=f"other-{uuid.uuid4().hex[:8]}", domains=["other.example"], timezone="UTC"
    )
