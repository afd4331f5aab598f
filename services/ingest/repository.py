"""All SQL of the ingest service: a batch of rows from many requests, written in one round trip.

Each table gets one statement whatever the number of rows, both inside one function call sent
as one message with one array per column, so a batch of 2,000 events costs one round trip and
one transaction. They run straight on the pooled
connection's asyncpg connection: this is the hottest path of the product, and SQLAlchemy's
adapter (greenlet hops, cursor and result objects, engine events) cost a tenth of an ingest
worker's CPU at the seed load.
"""

from __future__ import annotations

import textwrap
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import asyncpg.prepared_stmt
import msgspec

_EVENT_RECORD = """
    project_id bigint, occurred_at timestamptz, event_uuid uuid, name text, distinct_id text, session_id text,
    url text, domain text, path text, title text, referrer text, referrer_domain text,
    utm_source text, utm_medium text, utm_campaign text, utm_term text, utm_content text,
    browser text, browser_version text, os text, os_version text, device_type text, country text,
    is_bot boolean, properties jsonb
"""
_EVENT_COLUMNS = [line.split()[0] for line in _EVENT_RECORD.replace("\n", " ").split(",")]
_EVENT_TYPES = [line.split()[1] for line in _EVENT_RECORD.replace("\n", " ").split(",")]


class EventRow(msgspec.Struct, gc=False, kw_only=True):
    """One event as stored; a batch goes to Postgres as one array per column (see write_batch)."""

    project_id: int
    occurred_at: datetime
    # None: Postgres makes one. Only client-made uuids can repeat (a retried batch), so
    # only those go through ingested_events.
    event_uuid: uuid.UUID | None = None
    name: str
    distinct_id: str
    session_id: str
    url: str
    domain: str
    path: str
    title: str | None = None
    referrer: str | None = None
    referrer_domain: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    browser: str | None = None
    browser_version: str | None = None
    os: str | None = None
    os_version: str | None = None
    device_type: str | None = None
    country: str | None = None
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


# The function that stores a batch, and its parameters: one array per column, events' and chunks'
# (migration 1040, which holds the same text; tests/ingest/test_store_events_function.py compares
# them word for word). A PL/pgSQL function's statements are planned once per backend, where
# their text sent as a query was parsed and planned again for every batch (~0.07 ms of ~0.5 ms
# of Postgres CPU per 8-event request), and PgBouncer's transaction pooling rules out named
# prepared statements. A change here takes a migration that replaces the function.
_FUNCTION = "ingest_store_batch"
_CHUNK_RECORD = """
    project_id bigint, session_id text, seq integer, first_timestamp timestamptz, last_timestamp timestamptz,
    event_count integer, has_full_snapshot boolean, content_encoding text, data bytea, distinct_id text,
    click_count integer, page_count integer, active_ms bigint, first_url text, country text, browser text,
    os text, device_type text
"""
_CHUNK_COLUMNS = [item.split()[0] for item in _CHUNK_RECORD.replace("\n", " ").split(",")]
_CHUNK_TYPES = [item.split()[1] for item in _CHUNK_RECORD.replace("\n", " ").split(",")]
# Parameter names carry a prefix: a PL/pgSQL parameter named as a column makes the column's
# references ambiguous.
_EVENT_PARAMETERS = [f"in_event_{column}" for column in _EVENT_COLUMNS]
_CHUNK_PARAMETERS = [f"in_chunk_{column}" for column in _CHUNK_COLUMNS]


def _listed(names: list[str]) -> str:
    # Comma-separated, cut into lines that fit the migration's source (whitespace means nothing to SQL).
    return textwrap.fill(
        ", ".join(names), 88, subsequent_indent=" " * 16, break_long_words=False, break_on_hyphens=False
    )


_EVENT_ARRAYS = _listed(_EVENT_PARAMETERS)
_CHUNK_ARRAYS = _listed(_CHUNK_PARAMETERS)
_EVENT_SELECTED = _listed(_EVENT_COLUMNS)
_CHUNK_SELECTED = _listed(_CHUNK_COLUMNS)
_EVENT_STORED = _listed(
    ["input.stored_event_uuid" if column == "event_uuid" else f"input.{column}" for column in _EVENT_COLUMNS]
)

# The batch's events, unnested from their column arrays. Client uuids are claimed in
# ingested_events first, an event whose uuid was already there is a retry and is skipped; each
# (session, visitor, URL) is recorded once in event_session_urls (what the player's "URL
# contains" searches, 0840), in key order. The stored uuid is made inside `input`: Citus 13.2
# drops the column from COALESCE(input.event_uuid, gen_random_uuid()) in the outer SELECT.
_INSERT_EVENTS = f"""
        WITH input AS (
            SELECT
                {_EVENT_SELECTED},
                   COALESCE(batch.event_uuid, gen_random_uuid()) AS stored_event_uuid
            FROM unnest(
                {_EVENT_ARRAYS}
            ) AS batch(
                {_EVENT_SELECTED}
            )
        ),
        first_seen AS (
            INSERT INTO ingested_events (project_id, event_uuid)
            SELECT project_id, event_uuid FROM input WHERE event_uuid IS NOT NULL
            ON CONFLICT DO NOTHING
            RETURNING project_id, event_uuid
        ),
        session_urls AS (
            INSERT INTO event_session_urls (project_id, session_id, distinct_id, url_hash, url, path, first_seen)
            SELECT project_id, session_id, distinct_id, md5(url)::uuid, min(url), min(path), min(occurred_at)
            FROM input
            GROUP BY project_id, session_id, distinct_id, md5(url)::uuid
            ORDER BY project_id, session_id, distinct_id, md5(url)::uuid
            ON CONFLICT DO NOTHING
        )
        INSERT INTO events (
                {_EVENT_SELECTED}
        )
        SELECT
                {_EVENT_STORED}
        FROM input
        WHERE input.event_uuid IS NULL
           OR EXISTS (SELECT 1 FROM first_seen
                      WHERE first_seen.project_id = input.project_id AND first_seen.event_uuid = input.event_uuid)
"""

# New chunks are stored, then folded into their session's summary: only chunks that were
# really inserted count, so a retried chunk changes nothing. Sessions are upserted in key
# order, so two writers touching the same sessions lock them in the same order.
_INSERT_CHUNKS = f"""
    WITH input AS (
        SELECT
                {_CHUNK_SELECTED}
        FROM unnest(
                {_CHUNK_ARRAYS}
            ) AS raw(
                {_CHUNK_SELECTED}
            )
    ),
    stored AS (
        INSERT INTO replay_chunks (project_id, session_id, seq, first_timestamp, last_timestamp, event_count,
                                   has_full_snapshot, content_encoding, byte_size, data, distinct_id)
        SELECT project_id, session_id, seq, first_timestamp, last_timestamp, event_count,
               has_full_snapshot, content_encoding, octet_length(data), data, distinct_id
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
    )
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
        -- The column's default, now(): Citus takes only immutable functions in DO UPDATE SET.
        updated_at = EXCLUDED.updated_at
"""

# Chunks first: inserting events fires the query rollups' trigger, which holds the (project,
# day) counter row until commit, so concurrent batches wait on it; the chunks (tens of kB) stay
# outside that window.
_FUNCTION_BODY = f"""
BEGIN
    IF cardinality(in_chunk_project_id) > 0 THEN
{_INSERT_CHUNKS};
    END IF;
    IF cardinality(in_event_project_id) > 0 THEN
{_INSERT_EVENTS};
    END IF;
END
"""
_FUNCTION_PARAMETERS = ", ".join(
    [f"{name} {type_}[]" for name, type_ in zip(_CHUNK_PARAMETERS, _CHUNK_TYPES, strict=True)]
    + [f"{name} {type_}[]" for name, type_ in zip(_EVENT_PARAMETERS, _EVENT_TYPES, strict=True)]
)
_STORE_BATCH = "SELECT {}({})".format(
    _FUNCTION,
    ", ".join(f"${index}::{type_}[]" for index, type_ in enumerate([*_CHUNK_TYPES, *_EVENT_TYPES], start=1)),
)

# Each pooled asyncpg connection's statement for _STORE_BATCH: its parameter types, learnt once
# (a Describe, one round trip), then every batch is one message (Parse, Bind, Execute, Sync).
_STATEMENTS: weakref.WeakKeyDictionary[asyncpg.Connection, asyncpg.prepared_stmt.PreparedStatement] = (
    weakref.WeakKeyDictionary()
)


async def write_batch(connection: asyncpg.Connection, events: list[EventRow], chunks: list[ChunkRow]) -> None:
    """Stores the chunks and the events not stored before, in one round trip and one transaction.

    One call of ingest_store_batch, its arguments one array per column sent as binary
    parameters: Postgres reads each value with its type's binary receive function, where a
    JSON document was lexed as a literal, validated, parsed again with a hash table per object
    and each value's text put through its type's input function (~0.09 ms per 8-event request,
    a quarter of the statement; docs/benchmarks.md). The pooling connections keep no named
    statements (services/common/db.py: PgBouncer's transaction pooling), so asyncpg sends the
    call as an unnamed statement, Parse, Bind, Execute and Sync in one message, which Postgres
    runs as one implicit transaction: all committed or none. Only the first batch of a
    connection pays one more round trip, the Describe that gives asyncpg the parameter types.
    """
    if not events and not chunks:
        return
    statement = _STATEMENTS.get(connection)
    if statement is None:
        statement = await connection.prepare(_STORE_BATCH)
        _STATEMENTS[connection] = statement
    await statement.fetchval(*batch_arguments(events, chunks))


def batch_arguments(events: list[EventRow], chunks: list[ChunkRow]) -> list[list[Any]]:
    """ingest_store_batch's arguments: the chunks' columns, then the events', one list each."""
    arguments: list[list[Any]] = [[getattr(chunk, column) for chunk in chunks] for column in _CHUNK_COLUMNS]
    for column in _EVENT_COLUMNS:
        if column == "properties":
            # asyncpg takes jsonb as text; Postgres parses it once, as it parsed the document's.
            arguments.append([_encode_json(event.properties).decode() for event in events])
        else:
            arguments.append([getattr(event, column) for event in events])
    return arguments


_encode_json = msgspec.json.Encoder().encode
