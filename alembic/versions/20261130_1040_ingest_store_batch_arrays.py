"""The ingest writer's batch as one function call with one array per column, sent as binary.

The writer sent each batch as one simple-protocol message, each table's rows one JSON
document in a dollar-quoted literal (0870's ingest_store_events(json), 0890's
ingest_store_replay_chunks(json)). Postgres lexed the literal, validated it as json, then
json_to_recordset parsed it again, with a hash table per object, and put each value's text
through its type's input function: ~0.09 ms of the ~0.37 ms of backend CPU per 8-event
request (`tools.bench.ingest_json`, docs/benchmarks.md), and a chunk's bytes went as base64.

ingest_store_batch takes both tables' rows as one array per column. The writer calls it with
binary parameters (asyncpg: Parse, Bind, Execute, Sync in one message, an unnamed statement, so
PgBouncer's transaction pooling is no obstacle and the batch is still one round trip and one
implicit transaction); Postgres reads each array with array_recv and each value with its type's
receive function. The statements inside are the writer's, unchanged but for where the rows come
from (unnest of the arrays instead of json_to_recordset): chunks first, then the events; client
uuids claimed in ingested_events, a retry skipped; event_session_urls in key order; the session
summary of new chunks only. The text is services/ingest/repository.py's _FUNCTION_BODY, word for
word (tests/ingest/test_store_events_function.py compares them). The two JSON functions are
dropped (one form); the downgrade puts them back from their own revisions' text.

SECURITY INVOKER (the default): the service role inserts with its own grants. On Citus the
function stays on the coordinator (not distributed), which plans its statements and sends each
row to its project's shard, as it did the JSON functions'.

Revision ID: 1040
Revises: 0960
Create Date: 2026-11-30
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "1040"
down_revision: str | None = "0960"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARAMETERS = """
    in_chunk_project_id bigint[],
    in_chunk_session_id text[],
    in_chunk_seq integer[],
    in_chunk_first_timestamp timestamptz[],
    in_chunk_last_timestamp timestamptz[],
    in_chunk_event_count integer[],
    in_chunk_has_full_snapshot boolean[],
    in_chunk_content_encoding text[],
    in_chunk_data bytea[],
    in_chunk_distinct_id text[],
    in_chunk_click_count integer[],
    in_chunk_page_count integer[],
    in_chunk_active_ms bigint[],
    in_chunk_first_url text[],
    in_chunk_country text[],
    in_chunk_browser text[],
    in_chunk_os text[],
    in_chunk_device_type text[],
    in_event_project_id bigint[],
    in_event_occurred_at timestamptz[],
    in_event_event_uuid uuid[],
    in_event_name text[],
    in_event_distinct_id text[],
    in_event_session_id text[],
    in_event_url text[],
    in_event_domain text[],
    in_event_path text[],
    in_event_title text[],
    in_event_referrer text[],
    in_event_referrer_domain text[],
    in_event_utm_source text[],
    in_event_utm_medium text[],
    in_event_utm_campaign text[],
    in_event_utm_term text[],
    in_event_utm_content text[],
    in_event_browser text[],
    in_event_browser_version text[],
    in_event_os text[],
    in_event_os_version text[],
    in_event_device_type text[],
    in_event_country text[],
    in_event_is_bot boolean[],
    in_event_properties jsonb[]
"""

# services/ingest/repository.py's _FUNCTION_BODY at this revision.
BODY = """
BEGIN
    IF cardinality(in_chunk_project_id) > 0 THEN

    WITH input AS (
        SELECT
                project_id, session_id, seq, first_timestamp, last_timestamp, event_count,
                has_full_snapshot, content_encoding, data, distinct_id, click_count,
                page_count, active_ms, first_url, country, browser, os, device_type
        FROM unnest(
                in_chunk_project_id, in_chunk_session_id, in_chunk_seq, in_chunk_first_timestamp,
                in_chunk_last_timestamp, in_chunk_event_count,
                in_chunk_has_full_snapshot, in_chunk_content_encoding, in_chunk_data,
                in_chunk_distinct_id, in_chunk_click_count, in_chunk_page_count,
                in_chunk_active_ms, in_chunk_first_url, in_chunk_country,
                in_chunk_browser, in_chunk_os, in_chunk_device_type
            ) AS raw(
                project_id, session_id, seq, first_timestamp, last_timestamp, event_count,
                has_full_snapshot, content_encoding, data, distinct_id, click_count,
                page_count, active_ms, first_url, country, browser, os, device_type
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
;
    END IF;
    IF cardinality(in_event_project_id) > 0 THEN

        WITH input AS (
            SELECT
                project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path,
                title, referrer, referrer_domain, utm_source, utm_medium, utm_campaign,
                utm_term, utm_content, browser, browser_version, os, os_version,
                device_type, country, is_bot, properties,
                   COALESCE(batch.event_uuid, gen_random_uuid()) AS stored_event_uuid
            FROM unnest(
                in_event_project_id, in_event_occurred_at, in_event_event_uuid, in_event_name,
                in_event_distinct_id, in_event_session_id, in_event_url,
                in_event_domain, in_event_path, in_event_title, in_event_referrer,
                in_event_referrer_domain, in_event_utm_source, in_event_utm_medium,
                in_event_utm_campaign, in_event_utm_term, in_event_utm_content,
                in_event_browser, in_event_browser_version, in_event_os,
                in_event_os_version, in_event_device_type, in_event_country,
                in_event_is_bot, in_event_properties
            ) AS batch(
                project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path,
                title, referrer, referrer_domain, utm_source, utm_medium, utm_campaign,
                utm_term, utm_content, browser, browser_version, os, os_version,
                device_type, country, is_bot, properties
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
                project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path,
                title, referrer, referrer_domain, utm_source, utm_medium, utm_campaign,
                utm_term, utm_content, browser, browser_version, os, os_version,
                device_type, country, is_bot, properties
        )
        SELECT
                input.project_id, input.occurred_at, input.stored_event_uuid, input.name,
                input.distinct_id, input.session_id, input.url, input.domain,
                input.path, input.title, input.referrer, input.referrer_domain,
                input.utm_source, input.utm_medium, input.utm_campaign, input.utm_term,
                input.utm_content, input.browser, input.browser_version, input.os,
                input.os_version, input.device_type, input.country, input.is_bot,
                input.properties
        FROM input
        WHERE input.event_uuid IS NULL
           OR EXISTS (SELECT 1 FROM first_seen
                      WHERE first_seen.project_id = input.project_id AND first_seen.event_uuid = input.event_uuid)
;
    END IF;
END
"""


def upgrade() -> None:
    op.execute(
        f"CREATE FUNCTION ingest_store_batch({PARAMETERS}) RETURNS void LANGUAGE plpgsql AS $function${BODY}$function$"
    )
    op.execute("DROP FUNCTION IF EXISTS ingest_store_events(json)")
    op.execute("DROP FUNCTION IF EXISTS ingest_store_replay_chunks(json)")


def _revision(name: str) -> object:
    # The JSON functions as their own revisions created them (0870, 0890), read from their files.
    (path,) = Path(__file__).parent.glob(f"20261130_{name}_*.py")
    spec = importlib.util.spec_from_file_location(f"_sightline_revision_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS ingest_store_batch({', '.join(p.split()[1] for p in PARAMETERS.split(','))})")
    _revision("0870").upgrade()  # type: ignore[attr-defined]
    _revision("0890").upgrade()  # type: ignore[attr-defined]
