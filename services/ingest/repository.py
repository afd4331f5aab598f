"""All SQL of the ingest service. The batch writer owns the transaction these run in.

Each write is one statement whatever the number of rows, so a batch of 2,000 events costs
one round trip. The statements run straight on the pooled connection's asyncpg connection:
this is the hottest path of the product, and SQLAlchemy's adapter (greenlet hops, cursor and
result objects, engine events) cost a tenth of an ingest worker's CPU at the seed load.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec


class EventRow(msgspec.Struct, gc=False):
    """One event as stored; sent to Postgres as one JSON document per batch."""

    project_id: int
    occurred_at: datetime
    # None: Postgres makes one. Only client-made uuids can repeat (a retried batch), so
    # only those go through ingested_events.
    event_uuid: uuid.UUID | None
    name: str
    distinct_id: str
    session_id: str
    url: str
    domain: str
    path: str
    title: str | None
    referrer: str | None
    referrer_domain: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    browser: str | None
    browser_version: str | None
    os: str | None
    os_version: str | None
    device_type: str | None
    country: str | None
    is_bot: bool
    properties: dict[str, Any]


@dataclass(slots=True)
class ChunkRow:
    project_id: int
    session_id: str
    seq: int
    first_timestamp: datetime
    last_timestamp: datetime
    event_count: int
    has_full_snapshot: bool
    content_encoding: str
    data: bytes
    # What this chunk adds to its session's summary.
    distinct_id: str
    click_count: int
    page_count: int
    active_ms: int
    first_url: str | None
    country: str | None
    browser: str | None
    os: str | None
    device_type: str | None


_EVENT_RECORD = """
    project_id bigint, occurred_at timestamptz, event_uuid uuid, name text, distinct_id text, session_id text,
    url text, domain text, path text, title text, referrer text, referrer_domain text,
    utm_source text, utm_medium text, utm_campaign text, utm_term text, utm_content text,
    browser text, browser_version text, os text, os_version text, device_type text, country text,
    is_bot boolean, properties jsonb
"""
_EVENT_COLUMNS = [line.split()[0] for line in _EVENT_RECORD.replace("\n", " ").split(",")]

# The batch travels as one JSON document (one parameter) that json_to_recordset turns back
# into rows: encoding it is one C call, where per-column arrays cost asyncpg a type check
# per element. Client uuids are claimed in ingested_events first; an event whose uuid was
# already there is a retry and is skipped.
_INSERT_EVENTS = f"""
    WITH input AS (
        SELECT * FROM json_to_recordset(CAST($1 AS json)) AS input({_EVENT_RECORD})
    ),
    first_seen AS (
        INSERT INTO ingested_events (project_id, event_uuid)
        SELECT project_id, event_uuid FROM input WHERE event_uuid IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING project_id, event_uuid
    )
    INSERT INTO events ({", ".join(_EVENT_COLUMNS)})
    SELECT {
    ", ".join(
        "COALESCE(input.event_uuid, gen_random_uuid())" if c == "event_uuid" else "input." + c for c in _EVENT_COLUMNS
    )
}
    FROM input
    WHERE input.event_uuid IS NULL
       OR EXISTS (SELECT 1 FROM first_seen
                  WHERE first_seen.project_id = input.project_id AND first_seen.event_uuid = input.event_uuid)
    """


async def insert_events(connection: asyncpg.Connection, rows: list[EventRow]) -> int:
    """Stores the events whose uuid was not stored before; returns how many were new."""
    if not rows:
        return 0
    status = await connection.execute(_INSERT_EVENTS, msgspec.json.encode(rows).decode())
    return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <rows>"


def _unnest(columns: tuple[tuple[str, str], ...]) -> str:
    arrays = ", ".join(f"CAST(${number} AS {sql_type}[])" for number, (_, sql_type) in enumerate(columns, 1))
    names = ", ".join(name for name, _ in columns)
    return f"unnest({arrays}) AS input({names})"


# Chunks travel as one array per column: a batch has few chunks, and bytea does not fit JSON.
_CHUNK_COLUMNS = (
    ("project_id", "bigint"),
    ("session_id", "text"),
    ("seq", "integer"),
    ("first_timestamp", "timestamptz"),
    ("last_timestamp", "timestamptz"),
    ("event_count", "integer"),
    ("has_full_snapshot", "boolean"),
    ("content_encoding", "text"),
    ("data", "bytea"),
    ("distinct_id", "text"),
    ("click_count", "integer"),
    ("page_count", "integer"),
    ("active_ms", "bigint"),
    ("first_url", "text"),
    ("country", "text"),
    ("browser", "text"),
    ("os", "text"),
    ("device_type", "text"),
)

# New chunks are stored, then folded into their session's summary: only chunks that were
# really inserted count, so a retried chunk changes nothing. Sessions are upserted in key
# order, so two writers touching the same sessions lock them in the same order.
_INSERT_CHUNKS = f"""
    WITH input AS (SELECT * FROM {_unnest(_CHUNK_COLUMNS)}),
    stored AS (
        INSERT INTO replay_chunks (project_id, session_id, seq, first_timestamp, last_timestamp, event_count,
                                   has_full_snapshot, content_encoding, byte_size, data)
        SELECT project_id, session_id, seq, first_timestamp, last_timestamp, event_count,
               has_full_snapshot, content_encoding, octet_length(data), data
        FROM input
        ON CONFLICT DO NOTHING
        RETURNING project_id, session_id, seq
    ),
    per_session AS (
        SELECT input.project_id, input.session_id,
               min(input.distinct_id) AS distinct_id,
               min(input.first_timestamp) AS started_at,
               max(input.last_timestamp) AS ended_at,
               sum(input.active_ms) AS active_ms,
               sum(input.click_count) AS click_count,
               sum(input.page_count) AS page_count,
               (array_agg(input.first_url ORDER BY input.first_timestamp)
                    FILTER (WHERE input.first_url IS NOT NULL))[1] AS first_url,
               min(input.country) AS country,
               min(input.browser) AS browser,
               min(input.os) AS os,
               min(input.device_type) AS device_type,
               count(*) AS chunk_count,
               sum(octet_length(input.data)) AS total_bytes
        FROM input JOIN stored USING (project_id, session_id, seq)
        GROUP BY input.project_id, input.session_id
    ),
    upserted AS (
        INSERT INTO replay_sessions AS session (
            project_id, session_id, distinct_id, started_at, ended_at, active_ms, click_count, page_count,
            first_url, country, browser, os, device_type, chunk_count, total_bytes)
        SELECT project_id, session_id, distinct_id, started_at, ended_at, active_ms, click_count, page_count,
               first_url, country, browser, os, device_type, chunk_count, total_bytes
        FROM per_session
        ORDER BY project_id, session_id
        ON CONFLICT (project_id, session_id) DO UPDATE SET
            started_at = LEAST(session.started_at, EXCLUDED.started_at),
            ended_at = GREATEST(session.ended_at, EXCLUDED.ended_at),
            active_ms = session.active_ms + EXCLUDED.active_ms,
            click_count = session.click_count + EXCLUDED.click_count,
            page_count = session.page_count + EXCLUDED.page_count,
            chunk_count = session.chunk_count + EXCLUDED.chunk_count,
            total_bytes = session.total_bytes + EXCLUDED.total_bytes,
            first_url = CASE
                WHEN EXCLUDED.first_url IS NOT NULL
                     AND (session.first_url IS NULL OR EXCLUDED.started_at < session.started_at)
                THEN EXCLUDED.first_url ELSE session.first_url END,
            country = COALESCE(session.country, EXCLUDED.country),
            browser = COALESCE(session.browser, EXCLUDED.browser),
            os = COALESCE(session.os, EXCLUDED.os),
            device_type = COALESCE(session.device_type, EXCLUDED.device_type),
            updated_at = now()
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM stored) AS new_chunks, (SELECT count(*) FROM upserted) AS sessions
    """


async def insert_replay_chunks(connection: asyncpg.Connection, rows: list[ChunkRow]) -> int:
    """Stores chunks not stored before and updates their sessions; returns how many were new."""
    if not rows:
        return 0
    columns = [[getattr(row, name) for row in rows] for name, _ in _CHUNK_COLUMNS]
    new_chunks = await connection.fetchval(_INSERT_CHUNKS, *columns)
    return int(new_chunks)
