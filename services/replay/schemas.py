"""What the replay API answers, as msgspec structs (camelCase on the wire).

SessionSummary and ChunkEntry are also what the repository reads: their attributes are the
columns of replay_sessions and replay_chunks (the repository selects them by these names), so
the session and chunk vocabularies are written here once.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class SessionSummary(msgspec.Struct, rename="camel"):
    session_id: str = msgspec.field(name="id")
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


class SessionPage(msgspec.Struct, rename="camel"):
    sessions: list[SessionSummary]
    # Opaque; pass it back as ``cursor`` for the next (older) page. Null on the last page.
    next_cursor: str | None


class ChunkEntry(msgspec.Struct, rename="camel"):
    seq: int
    first_timestamp: datetime
    last_timestamp: datetime
    event_count: int
    has_full_snapshot: bool = msgspec.field(name="fullSnapshot")
    content_encoding: str
    byte_size: int


class SessionVisit(msgspec.Struct, rename="camel"):
    """The session's source, from its first event (as the dashboard counts it); all null for direct visits."""

    referrer: str | None
    referrer_domain: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None


class SessionDetail(msgspec.Struct, rename="camel"):
    session: SessionSummary
    chunks: list[ChunkEntry]
    # None when the session has no stored events (only a recording, or a crawler's).
    visit: SessionVisit | None = None


class PersonDeletion(msgspec.Struct, rename="camel"):
    distinct_id: str
    deleted_events: int
    deleted_sessions: int
    deleted_chunks: int
    # Rows deleted per table, rollups included (table names as in the database).
    deleted_rows: dict[str, int]
    # Days whose rollups held the person and still hold others' events: read from raw events
    # until the refresher has rebuilt them.
    rollup_days_to_rebuild: int
