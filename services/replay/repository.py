"""All SQL of the replay service. Callers own the transaction (the request's, or a stream's short read)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import BigInteger, Text, bindparam, func, or_, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.db import asyncpg_connection
from services.common.models import EventSessionUrl, QuerySession, ReplayChunk, ReplaySession
from services.replay.schemas import ChunkEntry, SessionSummary, SessionVisit

# Events and replay chunks carry timestamps from the same browser clock, but events are
# skew-corrected at ingest and chunks are not; this much slack keeps a session's own
# pageviews inside the window used to match "url contains" against them.
_EVENT_MATCH_SLACK = timedelta(hours=1)
# The device type ingest gives a crawler (services/ingest/enrichment.py).
BOT_DEVICE_TYPE = "bot"


@dataclass(frozen=True)
class SessionFilters:
    started_from: datetime | None = None
    started_before: datetime | None = None
    min_duration_ms: int | None = None
    distinct_id: str | None = None
    url_contains: str | None = None
    country: str | None = None
    browser: str | None = None
    os: str | None = None
    device_type: str | None = None
    # The dashboard's filters: a path the session has an event on (exactly, as the dashboard's
    # "page"), and the visit's source (its first event's referrer domain and UTM tags).
    page: str | None = None
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    # Ingest marks a crawler's session with device type "bot" (as it flags the crawler's
    # events, which every dashboard query leaves out); the list leaves them out unless asked.
    include_bots: bool = False


class ReadBatch(NamedTuple):
    first_seq: int
    last_seq: int
    chunk_count: int


@dataclass(frozen=True)
class RecordingWindow:
    started_at: datetime
    # When the first chunk of the window begins; None if the session has no chunks.
    window_start: datetime | None
    batches: list[ReadBatch]


@dataclass(frozen=True)
class ChunkBody:
    seq: int
    content_encoding: str
    data: bytes


# Selected by the answer's own attribute names: what the API lists is what is read.
_SESSION_COLUMNS = tuple(getattr(ReplaySession, name) for name in SessionSummary.__struct_fields__)
_CHUNK_INDEX_COLUMNS = tuple(getattr(ReplayChunk, name) for name in ChunkEntry.__struct_fields__)


# A "URL contains" or page search looks at the newest sessions first, in widening windows back from
# the cursor (or now): a common term fills a page from the last day's events alone, and only
# a rare one (which the trigram index finds fast) reads the whole history. Measured with
# `make bench-session-list`, see docs/benchmarks.md.
_URL_SEARCH_WINDOWS = (timedelta(days=1), timedelta(days=7), None)


async def list_sessions(
    connection: AsyncConnection,
    project_id: int,
    filters: SessionFilters,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[SessionSummary]:
    """Newest first by (started_at, session_id); ``after`` is the last row of the previous page.

    Keyset pagination, not OFFSET: sessions that arrive between two pages sort before the
    cursor (they are newer), so a page never repeats or skips a row that existed before.
    """
    if filters.url_contains is None and filters.page is None:
        return await _list_sessions(connection, project_id, filters, after=after, limit=limit, searched_from=None)
    newest = after[0] if after is not None else (await connection.execute(select(func.now()))).scalar_one()
    sessions: list[SessionSummary] = []
    for window in _URL_SEARCH_WINDOWS:
        searched_from = None if window is None else newest - window
        if searched_from is not None and filters.started_from is not None and searched_from <= filters.started_from:
            searched_from = None  # the filter's own start is nearer: this is the last search
        sessions = await _list_sessions(
            connection, project_id, filters, after=after, limit=limit, searched_from=searched_from
        )
        if len(sessions) >= limit or searched_from is None:
            break
    return sessions


async def _list_sessions(
    connection: AsyncConnection,
    project_id: int,
    filters: SessionFilters,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
    searched_from: datetime | None,
) -> list[SessionSummary]:
    query = select(*_SESSION_COLUMNS).where(ReplaySession.project_id == project_id)
    started_from = filters.started_from
    if searched_from is not None:
        started_from = searched_from if started_from is None else max(started_from, searched_from)
    if started_from is not None:
        query = query.where(ReplaySession.started_at >= started_from)
    if filters.started_before is not None:
        query = query.where(ReplaySession.started_at < filters.started_before)
    if filters.min_duration_ms is not None:
        query = query.where(ReplaySession.duration_ms >= filters.min_duration_ms)
    if filters.distinct_id is not None:
        query = query.where(ReplaySession.distinct_id == filters.distinct_id)
    if filters.country is not None:
        query = query.where(ReplaySession.country == filters.country.upper())
    if filters.browser is not None:
        query = query.where(func.lower(ReplaySession.browser) == filters.browser.lower())
    if filters.os is not None:
        query = query.where(func.lower(ReplaySession.os) == filters.os.lower())
    if filters.device_type is not None:
        query = query.where(ReplaySession.device_type == filters.device_type.lower())
    if not filters.include_bots and (filters.device_type or "").lower() != BOT_DEVICE_TYPE:
        query = query.where(ReplaySession.device_type.is_distinct_from(BOT_DEVICE_TYPE))
    if filters.url_contains is not None:
        # LIKE with the user's % and _ escaped (they match literally), on lower(url): the form
        # the trigram indexes serve (0610's on first_url, 0840's on each session's distinct
        # URLs). A correlated EXISTS, so that Postgres can choose per query: for a common term,
        # the newest sessions' few URLs each (by the key) until the page is full; for a rare
        # one, the matching URLs once (trigram index, first_seen within the window) and hashed.
        # A URL's first_seen is its first event's time.
        pattern = "%" + _escape_like(filters.url_contains.lower()) + "%"
        visited = (
            select(EventSessionUrl.session_id)
            .where(
                EventSessionUrl.project_id == ReplaySession.project_id,
                EventSessionUrl.session_id == ReplaySession.session_id,
                func.lower(EventSessionUrl.url).like(pattern, escape="\\"),
            )
            .correlate(ReplaySession)
        )
        if started_from is not None:
            visited = visited.where(EventSessionUrl.first_seen >= started_from - _EVENT_MATCH_SLACK)
        if filters.started_before is not None:
            visited = visited.where(EventSessionUrl.first_seen < filters.started_before + _EVENT_MATCH_SLACK)
        query = query.where(or_(func.lower(ReplaySession.first_url).like(pattern, escape="\\"), visited.exists()))
    if filters.page is not None:
        # The page is an event's path, which ingest cuts from its URL: a session that visited it
        # has a URL whose lower(url) holds lower(path), which the trigram index finds; the
        # path is then compared exactly.
        pattern = "%" + _escape_like(filters.page.lower()) + "%"
        on_page = select(EventSessionUrl.session_id).where(
            EventSessionUrl.project_id == project_id,
            func.lower(EventSessionUrl.url).like(pattern, escape="\\"),
            EventSessionUrl.path == filters.page,
        )
        if started_from is not None:
            on_page = on_page.where(EventSessionUrl.first_seen >= started_from - _EVENT_MATCH_SLACK)
        if filters.started_before is not None:
            on_page = on_page.where(EventSessionUrl.first_seen < filters.started_before + _EVENT_MATCH_SLACK)
        query = query.where(ReplaySession.session_id.in_(on_page))
    visit_conditions = [
        column == value
        for column, value in (
            (QuerySession.referrer, None if filters.referrer is None else filters.referrer.lower()),
            (QuerySession.utm_source, filters.utm_source),
            (QuerySession.utm_medium, filters.utm_medium),
            (QuerySession.utm_campaign, filters.utm_campaign),
        )
        if value is not None
    ]
    if visit_conditions:
        # The visit's source is its first event's (query_sessions, kept by the triggers on events,
        # the row the dashboard's own figures come from): a semi-join on the session's key.
        visits = select(QuerySession.session_id).where(QuerySession.project_id == project_id, *visit_conditions)
        if started_from is not None:
            visits = visits.where(QuerySession.started_at >= started_from - _EVENT_MATCH_SLACK)
        query = query.where(ReplaySession.session_id.in_(visits))
    if after is not None:
        query = query.where(tuple_(ReplaySession.started_at, ReplaySession.session_id) < tuple_(*after))
    query = query.order_by(ReplaySession.started_at.desc(), ReplaySession.session_id.desc()).limit(limit)
    result = await connection.execute(query)
    return [SessionSummary(**row._mapping) for row in result]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def find_session(connection: AsyncConnection, project_id: int, session_id: str) -> SessionSummary | None:
    result = await connection.execute(
        select(*_SESSION_COLUMNS).where(ReplaySession.project_id == project_id, ReplaySession.session_id == session_id)
    )
    row = result.one_or_none()
    return None if row is None else SessionSummary(**row._mapping)


# The visit's first event is found by its primary key, which query_sessions keeps
# (started_at and first_uuid are that event's occurred_at and event_uuid): one index probe.
_SESSION_VISIT = text(
    """
    SELECT e.referrer, qs.referrer AS referrer_domain, qs.utm_source, qs.utm_medium, qs.utm_campaign
    FROM query_sessions qs
    LEFT JOIN events e
      ON e.project_id = qs.project_id AND e.occurred_at = qs.started_at AND e.event_uuid = qs.first_uuid
    WHERE qs.project_id = :project_id AND qs.session_id = :session_id
    """
).bindparams(bindparam("project_id", type_=BigInteger), bindparam("session_id", type_=Text))


async def session_visit(connection: AsyncConnection, project_id: int, session_id: str) -> SessionVisit | None:
    """Where the session came from: its first (non-bot) event's referrer and UTM tags; None without events."""
    result = await connection.execute(_SESSION_VISIT, {"project_id": project_id, "session_id": session_id})
    row = result.one_or_none()
    return None if row is None else SessionVisit(**row._mapping)


async def chunk_index(connection: AsyncConnection, project_id: int, session_id: str) -> list[ChunkEntry]:
    """Every chunk's metadata in seq order, without the bytes (a few dozen bytes per chunk)."""
    result = await connection.execute(
        select(*_CHUNK_INDEX_COLUMNS)
        .where(ReplayChunk.project_id == project_id, ReplayChunk.session_id == session_id)
        .order_by(ReplayChunk.seq)
    )
    return [ChunkEntry(**row._mapping) for row in result]


# The window and its read batches are worked out in Postgres, so that opening a recording
# returns a few rows per megabyte instead of one per chunk: its cost and memory do not grow
# with the session's length. The rules (service.py explains why):
# - the window starts at the last chunk with a full snapshot that begins at or before
#   `from`; failing that, at the first chunk with one; failing that, at the first chunk;
# - it ends just before the first later chunk that begins after `to` (all chunks if no `to`);
# - a chunk goes into the batch where its first byte falls, counting from the window's
#   start: the first batch holds the first `first_batch_bytes`, each later one
#   `batch_bytes`, so a batch overshoots its budget by at most one chunk.
_RECORDING_WINDOW = text(
    """
    WITH session AS (
        SELECT started_at FROM replay_sessions WHERE project_id = :project_id AND session_id = :session_id
    ),
    chunks AS (
        SELECT seq, first_timestamp, has_full_snapshot, byte_size FROM replay_chunks
        WHERE project_id = :project_id AND session_id = :session_id
    ),
    first_chunk AS (
        SELECT COALESCE(
            (SELECT max(seq) FROM chunks WHERE has_full_snapshot
                AND first_timestamp <= (SELECT started_at FROM session) + :from_ms * interval '1 millisecond'),
            (SELECT min(seq) FROM chunks WHERE has_full_snapshot),
            (SELECT min(seq) FROM chunks)
        ) AS seq
    ),
    last_chunk AS (
        SELECT COALESCE(
            (SELECT min(seq) - 1 FROM chunks WHERE seq > (SELECT seq FROM first_chunk)
                AND first_timestamp > (SELECT started_at FROM session) + :to_ms * interval '1 millisecond'),
            (SELECT max(seq) FROM chunks)
        ) AS seq
    ),
    window_chunks AS (
        SELECT seq, sum(byte_size) OVER (ORDER BY seq) - byte_size AS bytes_before
        FROM chunks WHERE seq BETWEEN (SELECT seq FROM first_chunk) AND (SELECT seq FROM last_chunk)
    ),
    batches AS (
        SELECT min(seq) AS first_seq, max(seq) AS last_seq, count(*) AS chunk_count
        FROM window_chunks
        GROUP BY CASE WHEN bytes_before < :first_batch_bytes THEN 0
                      ELSE 1 + (bytes_before - :first_batch_bytes) / :batch_bytes END
    )
    SELECT session.started_at,
           (SELECT first_timestamp FROM chunks WHERE seq = (SELECT seq FROM first_chunk)) AS window_start,
           batches.first_seq, batches.last_seq, batches.chunk_count
    FROM session LEFT JOIN batches ON true
    ORDER BY batches.first_seq
    """
).bindparams(
    bindparam("project_id", type_=BigInteger),
    bindparam("session_id", type_=Text),
    bindparam("from_ms", type_=BigInteger),
    bindparam("to_ms", type_=BigInteger),
    bindparam("first_batch_bytes", type_=BigInteger),
    bindparam("batch_bytes", type_=BigInteger),
)


async def recording_window(
    connection: AsyncConnection,
    project_id: int,
    session_id: str,
    *,
    from_ms: int,
    to_ms: int | None,
    first_batch_bytes: int,
    batch_bytes: int,
) -> RecordingWindow | None:
    """The session's start and the read batches of the window [from, to]; None if no such session."""
    result = await connection.execute(
        _RECORDING_WINDOW,
        {
            "project_id": project_id,
            "session_id": session_id,
            "from_ms": from_ms,
            "to_ms": to_ms,
            "first_batch_bytes": first_batch_bytes,
            "batch_bytes": batch_bytes,
        },
    )
    rows = result.all()
    if not rows:
        return None
    batches = [ReadBatch(row.first_seq, row.last_seq, row.chunk_count) for row in rows if row.first_seq is not None]
    return RecordingWindow(started_at=rows[0].started_at, window_start=rows[0].window_start, batches=batches)


_CHUNK_BODIES = (
    "SELECT seq, content_encoding, data FROM replay_chunks"
    " WHERE project_id = $1 AND session_id = $2 AND seq BETWEEN $3 AND $4 ORDER BY seq"
)


async def chunk_bodies(
    connection: AsyncConnection, project_id: int, session_id: str, first_seq: int, last_seq: int
) -> list[ChunkBody]:
    """The stored bytes of chunks first_seq..last_seq, in seq order (a range of the primary key).

    Straight through asyncpg: this is where a recording's bytes come from, and SQLAlchemy's
    adapter (greenlet hops, row objects) cost 2.5 times the CPU for the same rows, measured
    on a 120-minute session (80 vs 32 ms per 4.6 MB).
    """
    driver = await asyncpg_connection(connection)
    if driver.is_in_transaction():
        rows = await driver.fetch(_CHUNK_BODIES, project_id, session_id, first_seq, last_seq)
    else:
        # Inside a transaction, so PgBouncer keeps the unnamed statement's prepare and
        # execute on one server connection (see services/common/db.py).
        async with driver.transaction(readonly=True):
            rows = await driver.fetch(_CHUNK_BODIES, project_id, session_id, first_seq, last_seq)
    return [ChunkBody(seq=row[0], content_encoding=row[1], data=row[2]) for row in rows]
