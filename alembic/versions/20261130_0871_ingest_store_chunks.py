"""The ingest writer's replay chunks statement as a plpgsql function too, planned once per backend.

As 0870 did for events: the chunks statement (three CTEs, an upsert of the sessions) was parsed,
analysed and planned again for every writer batch that held a chunk, and at the seed load
every visitor sends a chunk as often as an events batch. The writer now sends
`SELECT ingest_store_chunks($rows$...$rows$)`, in the same message and implicit transaction as
the events. The statement is the writer's, unchanged: new chunks are stored and only those are
folded into their session's summary, so a retried chunk changes nothing; sessions are upserted
in key order. The JSON record's columns are the writer's `ChunkRow` fields
(services/ingest/repository.py; tests/ingest/test_store_events_function.py checks both agree).

Revision ID: 0871
Revises: 0870
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0871"
down_revision: str | None = "0870"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "ingest_store_chunks"

_CREATE = """
    CREATE OR REPLACE FUNCTION ingest_store_chunks(chunks_json json) RETURNS void LANGUAGE plpgsql AS $function$
    BEGIN
        WITH input AS (
            SELECT *, decode(data_hex, 'hex') AS data
            FROM json_to_recordset(chunks_json) AS input(
                project_id bigint, session_id text, seq integer, first_timestamp timestamptz,
                last_timestamp timestamptz, event_count integer, has_full_snapshot boolean, content_encoding text,
                data_hex text, distinct_id text, click_count integer, page_count integer, active_ms bigint,
                first_url text, country text, browser text, os text, device_type text)
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
            updated_at = EXCLUDED.updated_at;
    END
    $function$
"""


def upgrade() -> None:
    op.execute(_CREATE)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}(json)")
