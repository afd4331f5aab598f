"""The ingest writer's events statement as a plpgsql function, so each backend plans it once.

The writer sends each batch as one simple-protocol message (one round trip, no explicit
transaction: services/ingest/repository.py), so Postgres parsed, analysed and planned its
statement (three CTEs, a 25-column json_to_recordset, an insert routed over the partitions)
again for every batch: about 0.07 ms of backend CPU per 8-event request out of ~0.5 ms
(`tools.bench.ingest_postgres`, docs/benchmarks.md). Protocol-level prepared statements do not
survive PgBouncer's transaction pooling (any batch may land on any server connection); a
plpgsql function's statements are planned once per backend and the plan kept (a generic plan:
json_to_recordset's estimate does not depend on the document). The writer now sends
`SELECT ingest_store_events($rows$...$rows$)`, still one message and one implicit transaction.

The statement is the writer's, unchanged (same CTEs, same order, same conflict handling): client
uuids are claimed in ingested_events first and an event whose uuid was already there is a retry
and is skipped; each (session, visitor, URL) is recorded once in event_session_urls, in key
order. The stored uuid is made inside `input`: Citus 13.2 drops the column from
COALESCE(input.event_uuid, gen_random_uuid()) in the outer SELECT. The one-letter keys of the
JSON document are the writer's `EventRow` field names (services/ingest/repository.py);
tests/ingest/test_store_events_function.py checks that both agree.

SECURITY INVOKER (the default): the service role inserts with its own grants, as before. On
Citus the function stays on the coordinator (not distributed): its statement is planned there as
the writer's statement was.

Revision ID: 0870
Revises: 0850
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0870"
down_revision: str | None = "0850"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "ingest_store_events"

# (key in the writer's JSON document, column, type), in the events table's column order.
RECORD = (
    ("a", "project_id", "bigint"),
    ("b", "occurred_at", "timestamptz"),
    ("c", "event_uuid", "uuid"),
    ("d", "name", "text"),
    ("e", "distinct_id", "text"),
    ("f", "session_id", "text"),
    ("g", "url", "text"),
    ("h", "domain", "text"),
    ("i", "path", "text"),
    ("j", "title", "text"),
    ("k", "referrer", "text"),
    ("l", "referrer_domain", "text"),
    ("m", "utm_source", "text"),
    ("n", "utm_medium", "text"),
    ("o", "utm_campaign", "text"),
    ("p", "utm_term", "text"),
    ("q", "utm_content", "text"),
    ("r", "browser", "text"),
    ("s", "browser_version", "text"),
    ("t", "os", "text"),
    ("u", "os_version", "text"),
    ("v", "device_type", "text"),
    ("w", "country", "text"),
    ("x", "is_bot", "boolean"),
    ("y", "properties", "jsonb"),
)

_INPUT_COLUMNS = ",\n                   ".join(f"batch.{key} AS {column}" for key, column, _ in RECORD)
_RECORD_TYPES = ", ".join(f"{key} {type_}" for key, _, type_ in RECORD)
_EVENT_COLUMNS = ", ".join(column for _, column, _ in RECORD)
_STORED = ", ".join(
    "input.stored_event_uuid" if column == "event_uuid" else f"input.{column}" for _, column, _ in RECORD
)

_CREATE = f"""
    CREATE OR REPLACE FUNCTION {FUNCTION}(events_json json) RETURNS void LANGUAGE plpgsql AS $function$
    BEGIN
        WITH input AS (
            SELECT {_INPUT_COLUMNS},
                   COALESCE(batch.c, gen_random_uuid()) AS stored_event_uuid
            FROM json_to_recordset(events_json) AS batch({_RECORD_TYPES})
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
        INSERT INTO events ({_EVENT_COLUMNS})
        SELECT {_STORED}
        FROM input
        WHERE input.event_uuid IS NULL
           OR EXISTS (SELECT 1 FROM first_seen
                      WHERE first_seen.project_id = input.project_id AND first_seen.event_uuid = input.event_uuid);
    END
    $function$
"""


def upgrade() -> None:
    op.execute(_CREATE)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}(json)")
