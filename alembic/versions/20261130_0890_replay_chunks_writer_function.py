"""The replay writer's statement in a function, so Postgres plans it once per connection.

The ingest writer stored a batch's replay chunks with one statement sent as text
(services/ingest/repository.py, ``_INSERT_CHUNKS``): parsed, analysed and planned again for
every batch, because the writer uses the simple protocol (one round trip; PgBouncer's
transaction pooling), where prepared statements are not available. Planning it (three CTEs, a
join, a grouped aggregate and an upsert with fourteen SET expressions) cost about as much as
storing the chunks: `python -m tools.loadtest.replay_cost postgres` measured 0.21 ms of backend
CPU per steady ~3 kB chunk sent as text against 0.13-0.15 ms through a PL/pgSQL function,
whose plans are cached for the connection's life (docs/benchmarks.md, "Replay: CPU budget per
chunk").

The writer now sends ``SELECT ingest_store_replay_chunks(CAST($rows$...$rows$ AS json))``. The
function runs the same statement, word for word (tests/ingest/test_repository.py compares it
with the repository's text), so what is stored, the idempotency by (project_id, session_id,
seq) and the session summary are unchanged. SECURITY INVOKER: it writes with the service
role's own grants. On Citus it runs on the coordinator, as the statement did.

Revision ID: 0890
Revises: 0870
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0890"
down_revision: str | None = "0870"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The text of services/ingest/repository.py's _INSERT_CHUNKS at this revision, the batch's JSON
# document being the parameter chunk_rows.
STATEMENT = """
    WITH input AS (
        SELECT project_id, session_id, seq, first_timestamp, last_timestamp, event_count, has_full_snapshot,
               content_encoding, decode(raw.data, 'base64') AS data, distinct_id, click_count, page_count,
               active_ms, first_url, country, browser, os, device_type
        FROM json_to_recordset(CAST(chunk_rows AS json)) AS raw(
    project_id bigint, session_id text, seq integer, first_timestamp timestamptz, last_timestamp timestamptz,
    event_count integer, has_full_snapshot boolean, content_encoding text, data text, distinct_id text,
    click_count integer, page_count integer, active_ms bigint, first_url text, country text, browser text,
    os text, device_type text
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


def upgrade() -> None:
    op.execute(
        "CREATE FUNCTION ingest_store_replay_chunks(chunk_rows json) RETURNS void LANGUAGE plpgsql AS $function$\n"
        "BEGIN\n" + STATEMENT + ";\nEND\n$function$"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS ingest_store_replay_chunks(json)")
