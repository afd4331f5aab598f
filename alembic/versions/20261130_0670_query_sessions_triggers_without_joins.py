"""Query sessions: the triggers aggregate a batch in one grouping pass, with nested loops allowed.

Revision 0600's triggers ran with enable_nestloop off (their joined per-session subqueries
went quadratic on a transition table otherwise). That also ruled out key lookups: each
inserting statement hash-joined the whole of query_sessions to find the touched sessions
(909 ms for a 200-event batch with 2.7M sessions stored). The functions now aggregate with
ordered aggregates, join nothing, and look sessions up by key. `ALTER FUNCTION ... RESET`
clears 0600's setting on the functions.

Revision ID: 0670
Revises: 0660
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0670"
down_revision: str | None = "0660"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VISIT_COLUMNS = ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")
_VISIT_SOURCES = (
    "referrer_domain",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "country",
    "browser",
    "os",
    "device_type",
)


def _sessions_of(relation: str) -> str:
    """Session rows aggregated from the non-bot event rows of `relation`, in one grouping pass.

    Ordered aggregates instead of joined DISTINCT ON subqueries: no join, so no plan that could
    go quadratic on a transition table, and nested loops stay allowed for the key lookups.
    """
    order = "ORDER BY occurred_at, event_uuid"
    order_desc = "ORDER BY occurred_at DESC, event_uuid DESC"
    pageview = "FILTER (WHERE name = 'pageview')"
    first_columns = ", ".join(
        f"(array_agg({source} {order}))[1] AS {column}"
        for source, column in zip(_VISIT_SOURCES, _VISIT_COLUMNS, strict=True)
    )
    return f"""
        SELECT project_id, session_id, min(distinct_id) AS distinct_id, min(occurred_at) AS started_at,
               (array_agg(event_uuid {order}))[1] AS first_uuid, max(occurred_at) AS ended_at,
               count(*) {pageview} AS pageviews, count(*) AS events,
               (array_agg(path {order}) {pageview})[1] AS entry_page,
               (array_agg(occurred_at {order}) {pageview})[1] AS entry_at,
               (array_agg(event_uuid {order}) {pageview})[1] AS entry_uuid,
               (array_agg(path {order_desc}) {pageview})[1] AS exit_page,
               (array_agg(occurred_at {order_desc}) {pageview})[1] AS exit_at,
               (array_agg(event_uuid {order_desc}) {pageview})[1] AS exit_uuid,
               {first_columns}
        FROM {relation} WHERE NOT is_bot GROUP BY project_id, session_id
    """


_COLUMNS = (
    "project_id, session_id, distinct_id, started_at, first_uuid, ended_at, pageviews, events,"
    " entry_page, entry_at, entry_uuid, exit_page, exit_at, exit_uuid, " + ", ".join(_VISIT_COLUMNS)
)

# The earlier (occurred_at, uuid) wins the first event and the entry; the later one the exit.
_FIRST_WINS = "(excluded.started_at, excluded.first_uuid) < (s.started_at, s.first_uuid)"
_ENTRY_WINS = (
    "excluded.entry_at IS NOT NULL"
    " AND (s.entry_at IS NULL OR (excluded.entry_at, excluded.entry_uuid) < (s.entry_at, s.entry_uuid))"
)
_EXIT_WINS = (
    "excluded.exit_at IS NOT NULL"
    " AND (s.exit_at IS NULL OR (excluded.exit_at, excluded.exit_uuid) > (s.exit_at, s.exit_uuid))"
)
_MERGE = ", ".join(
    [
        "distinct_id = least(s.distinct_id, excluded.distinct_id)",
        *(
            f"{column} = CASE WHEN {_FIRST_WINS} THEN excluded.{column} ELSE s.{column} END"
            for column in (*_VISIT_COLUMNS, "first_uuid")
        ),
        "started_at = least(s.started_at, excluded.started_at)",
        "ended_at = greatest(s.ended_at, excluded.ended_at)",
        "pageviews = s.pageviews + excluded.pageviews",
        "events = s.events + excluded.events",
        *(
            f"{column} = CASE WHEN {_ENTRY_WINS} THEN excluded.{column} ELSE s.{column} END"
            for column in ("entry_page", "entry_uuid", "entry_at")
        ),
        *(
            f"{column} = CASE WHEN {_EXIT_WINS} THEN excluded.{column} ELSE s.{column} END"
            for column in ("exit_page", "exit_uuid", "exit_at")
        ),
    ]
)


def upgrade() -> None:
    # Days first, then sessions, in both functions and in key order: erasure (a delete) and
    # ingest (an insert) take their locks in the same order and never deadlock.
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION query_sessions_note_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- The new events' days, and the days the touched sessions had started on before
            -- this statement extends them (their session figures live on those days).
            INSERT INTO query_rollup_days AS d (project_id, day)
            SELECT project_id, day FROM (
                SELECT c.project_id, (c.occurred_at AT TIME ZONE p.timezone)::date AS day
                FROM changed_events c JOIN projects p ON p.project_id = c.project_id
                UNION
                SELECT s.project_id, (s.started_at AT TIME ZONE p.timezone)::date
                FROM (SELECT DISTINCT project_id, session_id FROM changed_events WHERE NOT is_bot) k
                JOIN query_sessions s ON s.project_id = k.project_id AND s.session_id = k.session_id
                JOIN projects p ON p.project_id = s.project_id
            ) days ORDER BY 1, 2
            ON CONFLICT (project_id, day) DO UPDATE SET changes = d.changes + 1, changed_at = now();

            INSERT INTO query_sessions AS s ({_COLUMNS})
            SELECT {_COLUMNS} FROM ({_sessions_of("changed_events")}) merged ORDER BY project_id, session_id
            ON CONFLICT (project_id, session_id) DO UPDATE SET {_MERGE};
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION query_sessions_note_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO query_rollup_days AS d (project_id, day)
            SELECT project_id, day FROM (
                SELECT c.project_id, (c.occurred_at AT TIME ZONE p.timezone)::date AS day
                FROM changed_events c JOIN projects p ON p.project_id = c.project_id
                UNION
                SELECT s.project_id, (s.started_at AT TIME ZONE p.timezone)::date
                FROM (SELECT DISTINCT project_id, session_id FROM changed_events) k
                JOIN query_sessions s ON s.project_id = k.project_id AND s.session_id = k.session_id
                JOIN projects p ON p.project_id = s.project_id
            ) days ORDER BY 1, 2
            ON CONFLICT (project_id, day) DO UPDATE SET changes = d.changes + 1, changed_at = now();

            -- Each touched session again from the events left, which lie within its old span
            -- (so only the partitions of that span are read).
            WITH gone AS (
                DELETE FROM query_sessions s USING (SELECT DISTINCT project_id, session_id FROM changed_events) k
                WHERE s.project_id = k.project_id AND s.session_id = k.session_id
                RETURNING s.project_id, s.session_id, s.started_at, s.ended_at
            ), remaining AS (
                SELECT e.* FROM gone g CROSS JOIN LATERAL (SELECT * FROM events e WHERE e.project_id = g.project_id
                    AND e.session_id = g.session_id AND e.occurred_at BETWEEN g.started_at AND g.ended_at) e
            )
            INSERT INTO query_sessions ({_COLUMNS})
            SELECT {_COLUMNS} FROM ({_sessions_of("remaining")}) rebuilt ORDER BY project_id, session_id;
            RETURN NULL;
        END
        $$
        """
    )
    for function in ("query_sessions_note_inserts", "query_sessions_note_deletes"):
        op.execute(f"ALTER FUNCTION {function}() RESET enable_nestloop")


def downgrade() -> None:
    # The 0600 definitions differ only in speed; the setting is what made them safe there.
    for function in ("query_sessions_note_inserts", "query_sessions_note_deletes"):
        op.execute(f"ALTER FUNCTION {function}() SET enable_nestloop = off")
