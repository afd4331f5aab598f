"""All SQL of the replay service. Callers own the transaction (or the short read)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import delete, exists, func, literal, or_, select, tuple_, union
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.models import Event, ReplayChunk, ReplaySession

# Events and replay chunks carry timestamps from the same browser clock, but events are
# skew-corrected at ingest and chunks are not; this much slack keeps a session's own
# pageviews inside the window used to match "url contains" against them.
_EVENT_MATCH_SLACK = timedelta(hours=1)


@dataclass(frozen=True)
class SessionFilters:
    started_from: datetime | None = None
    started_before: datetime | None = None
    min_duration_ms: int | None = None
    distinct_id: str | None = None
    url_contains: str | None = None
    country: str | None = None
    browser: str | None = None
    device_type: str | None = None


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    distinct_id: str
    started_at: datetime
    ended_at: datetime
    duration_ms: int
    active_ms: int
    page_count: int
    click_count: int
    first_url: str | None
    country: str | None
    browser: str | None
    os: str | None
    device_type: str | None
    chunk_count: int
    total_bytes: int


@dataclass(frozen=True)
class ChunkIndexRow:
    seq: int
    first_timestamp: datetime
    last_timestamp: datetime
    event_count: int
    has_full_snapshot: bool
    content_encoding: str
    byte_size: int


class PlanChunk(NamedTuple):
    """What planning a recording needs of each chunk; a tuple, since a session has hundreds."""

    seq: int
    first_timestamp: datetime
    has_full_snapshot: bool
    byte_size: int


@dataclass(frozen=True)
class RecordingIndex:
    started_at: datetime
    chunks: list[PlanChunk]


@dataclass(frozen=True)
class ChunkBody:
    seq: int
    content_encoding: str
    data: bytes


@dataclass(frozen=True)
class PersonDeletionCounts:
    events: int
    sessions: int
    chunks: int


_SESSION_COLUMNS = (
    ReplaySession.session_id,
    ReplaySession.distinct_id,
    ReplaySession.started_at,
    ReplaySession.ended_at,
    ReplaySession.duration_ms,
    ReplaySession.active_ms,
    ReplaySession.page_count,
    ReplaySession.click_count,
    ReplaySession.first_url,
    ReplaySession.country,
    ReplaySession.browser,
    ReplaySession.os,
    ReplaySession.device_type,
    ReplaySession.chunk_count,
    ReplaySession.total_bytes,
)


async def list_sessions(
    connection: AsyncConnection,
    project_id: int,
    filters: SessionFilters,
    *,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[SessionRow]:
    """Newest first by (started_at, session_id); ``after`` is the last row of the previous page.

    Keyset pagination, not OFFSET: sessions that arrive between two pages sort before the
    cursor (they are newer), so a page never repeats or skips a row that existed before.
    """
    query = select(*_SESSION_COLUMNS).where(ReplaySession.project_id == project_id)
    if filters.started_from is not None:
        query = query.where(ReplaySession.started_at >= filters.started_from)
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
    if filters.device_type is not None:
        query = query.where(ReplaySession.device_type == filters.device_type.lower())
    if filters.url_contains is not None:
        # strpos, not LIKE: the user's text may hold % or _, which must match literally.
        needle = literal(filters.url_contains.lower())
        visited_url = exists(
            select(literal(1)).where(
                Event.project_id == project_id,
                Event.session_id == ReplaySession.session_id,
                Event.occurred_at >= ReplaySession.started_at - _EVENT_MATCH_SLACK,
                Event.occurred_at <= ReplaySession.ended_at + _EVENT_MATCH_SLACK,
                func.strpos(func.lower(Event.url), needle) > 0,
            )
        )
        query = query.where(or_(func.strpos(func.lower(ReplaySession.first_url), needle) > 0, visited_url))
    if after is not None:
        query = query.where(tuple_(ReplaySession.started_at, ReplaySession.session_id) < tuple_(*after))
    query = query.order_by(ReplaySession.started_at.desc(), ReplaySession.session_id.desc()).limit(limit)
    result = await connection.execute(query)
    return [SessionRow(**row._mapping) for row in result]


async def find_session(connection: AsyncConnection, project_id: int, session_id: str) -> SessionRow | None:
    result = await connection.execute(
        select(*_SESSION_COLUMNS).where(ReplaySession.project_id == project_id, ReplaySession.session_id == session_id)
    )
    row = result.one_or_none()
    return None if row is None else SessionRow(**row._mapping)


async def chunk_index(connection: AsyncConnection, project_id: int, session_id: str) -> list[ChunkIndexRow]:
    """Every chunk's metadata in seq order, without the bytes (a few dozen bytes per chunk)."""
    result = await connection.execute(
        select(
            ReplayChunk.seq,
            ReplayChunk.first_timestamp,
            ReplayChunk.last_timestamp,
            ReplayChunk.event_count,
            ReplayChunk.has_full_snapshot,
            ReplayChunk.content_encoding,
            ReplayChunk.byte_size,
        )
        .where(ReplayChunk.project_id == project_id, ReplayChunk.session_id == session_id)
        .order_by(ReplayChunk.seq)
    )
    return [ChunkIndexRow(**row._mapping) for row in result]


async def recording_index(connection: AsyncConnection, project_id: int, session_id: str) -> RecordingIndex | None:
    """The session's start and its chunks' plan columns in seq order, in one round trip; None if unknown."""
    result = await connection.execute(
        select(
            ReplaySession.started_at,
            ReplayChunk.seq,
            ReplayChunk.first_timestamp,
            ReplayChunk.has_full_snapshot,
            ReplayChunk.byte_size,
        )
        .select_from(ReplaySession)
        .outerjoin(
            ReplayChunk,
            (ReplayChunk.project_id == ReplaySession.project_id) & (ReplayChunk.session_id == ReplaySession.session_id),
        )
        .where(ReplaySession.project_id == project_id, ReplaySession.session_id == session_id)
        .order_by(ReplayChunk.seq)
    )
    rows = result.all()
    if not rows:
        return None
    chunks = [PlanChunk(row[1], row[2], row[3], row[4]) for row in rows if row[1] is not None]
    return RecordingIndex(started_at=rows[0][0], chunks=chunks)


async def chunk_bodies(
    connection: AsyncConnection, project_id: int, session_id: str, first_seq: int, last_seq: int
) -> list[ChunkBody]:
    """The stored bytes of chunks first_seq..last_seq, in seq order (a range of the primary key)."""
    result = await connection.execute(
        select(ReplayChunk.seq, ReplayChunk.content_encoding, ReplayChunk.data)
        .where(
            ReplayChunk.project_id == project_id,
            ReplayChunk.session_id == session_id,
            ReplayChunk.seq >= first_seq,
            ReplayChunk.seq <= last_seq,
        )
        .order_by(ReplayChunk.seq)
    )
    return [ChunkBody(seq=row.seq, content_encoding=row.content_encoding, data=row.data) for row in result]


async def delete_person(connection: AsyncConnection, project_id: int, distinct_id: str) -> PersonDeletionCounts:
    """Deletes a person's events, and every recording of a session they appear in.

    A session counts as theirs when its recording was made under their distinct id or
    when any of their events names it: a visitor identified mid-session has events under
    two ids but one recording, and that recording shows them.
    """
    sessions_of_person = union(
        select(ReplaySession.session_id).where(
            ReplaySession.project_id == project_id, ReplaySession.distinct_id == distinct_id
        ),
        select(Event.session_id).where(Event.project_id == project_id, Event.distinct_id == distinct_id),
    )
    # Recordings first: the events are what names some of the sessions.
    deleted_chunks = await connection.execute(
        delete(ReplayChunk).where(
            ReplayChunk.project_id == project_id, ReplayChunk.session_id.in_(sessions_of_person.scalar_subquery())
        )
    )
    deleted_sessions = await connection.execute(
        delete(ReplaySession).where(
            ReplaySession.project_id == project_id,
            ReplaySession.session_id.in_(sessions_of_person.scalar_subquery()),
        )
    )
    deleted_events = await connection.execute(
        delete(Event).where(Event.project_id == project_id, Event.distinct_id == distinct_id)
    )
    return PersonDeletionCounts(
        events=deleted_events.rowcount, sessions=deleted_sessions.rowcount, chunks=deleted_chunks.rowcount
    )
