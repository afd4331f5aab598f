"""All SQL of the ingest service: a batch of rows from many requests, written in one round trip.

Each table gets one statement whatever the number of rows, and both go in one message, so a
batch of 2,000 events costs one round trip and one transaction. They run straight on the pooled
connection's asyncpg connection: this is the hottest path of the product, and SQLAlchemy's
adapter (greenlet hops, cursor and result objects, engine events) cost a tenth of an ingest
worker's CPU at the seed load.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
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


def _short_key(index: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return (
        letters[index] if index < len(letters) else letters[index // len(letters) - 1] + letters[index % len(letters)]
    )


# In the JSON document an event's fields are one or two letters, and NULLs are left out
# (json_to_recordset reads a missing key as NULL): the column names, repeated in every row,
# were a third of the document, and Postgres's CPU to parse it grows with its bytes (per 8
# events: 0.12-0.16 ms with the names, 0.07-0.08 ms without them and the NULLs).
_EVENT_KEYS = {column: _short_key(index) for index, column in enumerate(_EVENT_COLUMNS)}


class EventRow(msgspec.Struct, gc=False, kw_only=True, omit_defaults=True, rename=_EVENT_KEYS):
    """One event as stored; sent to Postgres as one JSON document per batch (short keys, no NULLs)."""

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


_ROWS = "@ROWS@"  # where a statement's JSON document goes, as a dollar-quoted literal

# The batch travels as one JSON document that json_to_recordset turns back into rows. Client
# uuids are claimed in ingested_events first, an event whose uuid was already there is a retry
# and is skipped; each (session, visitor, URL) is recorded once in event_session_urls (what the
# player's "URL contains" searches, 0840), in key order. The stored uuid is made inside `input`:
# Citus 13.2 drops the column from COALESCE(input.event_uuid, gen_random_uuid()) in the outer
# SELECT. Postgres runs this statement inside ingest_store_events() (migration 0870, which holds
# the same text, @ROWS@ being its parameter events_json; tests/ingest/test_store_events_function.py
# compares them), as the chunks' below: a plpgsql function's statements are planned once per
# backend, where this text, sent as it is, was parsed and planned again for every batch (~0.07 ms
# of ~0.5 ms of Postgres CPU per 8-event request), and PgBouncer's transaction pooling rules out
# prepared statements. A change here takes a migration that replaces the function.
_EVENT_SELECTED = ", ".join(f"batch.{_EVENT_KEYS[column]} AS {column}" for column in _EVENT_COLUMNS)
_EVENT_KEYED_RECORD = ", ".join(
    f"{_EVENT_KEYS[column]} {type_}" for column, type_ in zip(_EVENT_COLUMNS, _EVENT_TYPES, strict=True)
)
_EVENT_STORED = ", ".join(
    "input.stored_event_uuid" if column == "event_uuid" else f"input.{column}" for column in _EVENT_COLUMNS
)
_INSERT_EVENTS = f"""
        WITH input AS (
            SELECT {_EVENT_SELECTED},
                   COALESCE(batch.{_EVENT_KEYS["event_uuid"]}, gen_random_uuid()) AS stored_event_uuid
            FROM json_to_recordset({_ROWS}) AS batch({_EVENT_KEYED_RECORD})
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
        INSERT INTO events ({", ".join(_EVENT_COLUMNS)})
        SELECT {_EVENT_STORED}
        FROM input
        WHERE input.event_uuid IS NULL
           OR EXISTS (SELECT 1 FROM first_seen
                      WHERE first_seen.project_id = input.project_id AND first_seen.event_uuid = input.event_uuid)
"""
_STORE_EVENTS = f"SELECT ingest_store_events(CAST({_ROWS} AS json))"

# Chunks travel the same way, their bytes as base64 (msgspec writes bytes so; decoded by
# Postgres). Hex made the document twice the chunk's size, base64 a third more: the query text
# Postgres scans and the JSON it parses are what a chunk's bytes cost before they are stored.
_CHUNK_RECORD = """
    project_id bigint, session_id text, seq integer, first_timestamp timestamptz, last_timestamp timestamptz,
    event_count integer, has_full_snapshot boolean, content_encoding text, data text, distinct_id text,
    click_count integer, page_count integer, active_ms bigint, first_url text, country text, browser text,
    os text, device_type text
"""

# New chunks are stored, then folded into their session's summary: only chunks that were
# really inserted count, so a retried chunk changes nothing. Sessions are upserted in key
# order, so two writers touching the same sessions lock them in the same order.
# Postgres runs this statement inside ingest_store_replay_chunks() (migration 0890, which holds
# the same text, @ROWS@ being its parameter chunk_rows; a test compares them): a PL/pgSQL
# function keeps its plans for the connection's life, where this text, sent as a query, was
# parsed and planned again for every batch, which cost more than storing the chunks.
_INSERT_CHUNKS = f"""
    WITH input AS (
        SELECT project_id, session_id, seq, first_timestamp, last_timestamp, event_count, has_full_snapshot,
               content_encoding, decode(raw.data, 'base64') AS data, distinct_id, click_count, page_count,
               active_ms, first_url, country, browser, os, device_type
        FROM json_to_recordset(CAST({_ROWS} AS json)) AS raw({_CHUNK_RECORD})
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
_STORE_CHUNKS = f"SELECT ingest_store_replay_chunks(CAST({_ROWS} AS json))"


async def write_batch(connection: asyncpg.Connection, events: list[EventRow], chunks: list[ChunkRow]) -> None:
    """Stores the chunks and the events not stored before, in one round trip and one transaction.

    Both statements go as one simple-protocol message, which Postgres runs as one implicit
    transaction: all committed or none. Parameters would take the extended protocol, which
    needs an explicit transaction (BEGIN, a Parse per statement, the execute, COMMIT: six
    round trips), each waiting for a turn of a busy event loop; at the seed load the batch's
    round trips, not Postgres, were what requests waited for. No value is ever spliced into
    the SQL: each table's rows are one JSON document passed as a dollar-quoted literal, whose
    content Postgres takes verbatim (see _dollar_quoted).

    Chunks first: inserting events fires the query rollups' trigger, which holds the
    (project, day) counter row until commit, so concurrent batches wait on it; the chunks
    (tens of kB) stay outside that window.
    """
    statements = []
    if chunks:
        statements.append(_STORE_CHUNKS.replace(_ROWS, _dollar_quoted(_chunks_json(chunks))))
    if events:
        statements.append(_STORE_EVENTS.replace(_ROWS, _dollar_quoted(msgspec.json.encode(events).decode())))
    if statements:
        await connection.execute(";".join(statements))


def _chunks_json(chunks: list[ChunkRow]) -> str:
    # msgspec encodes the dataclasses itself, bytes as base64: no dict per row, no hex copy.
    return msgspec.json.encode(chunks).decode()


def _dollar_quoted(document: str) -> str:
    """document as a Postgres dollar-quoted string constant: no escapes, taken verbatim.

    The literal ends at the first `$name$` after the opening one. No `$name` in the document
    means no such sequence starts inside it, including one that would run on into the closing
    tag (a document ending in `$rows`). JSON never holds a raw NUL (the encoder writes
    \u0000), which a query text could not carry.
    """
    name = "rows"
    while f"${name}" in document:
        name = f"rows_{secrets.token_hex(4)}"
    return f"${name}${document}${name}$"
