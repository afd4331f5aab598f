"""Query sessions: the triggers in the shape Citus runs them, on both engines.

Citus runs a trigger of a distributed table on each shard, on its worker. There it cannot plan
a transition table together with a Citus table, nor a function that is not immutable in
`DO UPDATE SET`. So, as revision 0700 did for the day markers of 0100: the transition table is
read alone (days and sessions aggregated from it in plpgsql), and each day marker and each
session is one single-row upsert or lookup by key, which Citus routes to the co-located shard
on the same worker. Same effect as 0670, in the same lock order (days, then sessions, each in
key order); on plain Postgres it is the same function.

Revision ID: 0680
Revises: 0670
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0680"
down_revision: str | None = "0670"
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


_VALUES = ", ".join(f"merged.{column.strip()}" for column in _COLUMNS.split(","))

# The days to mark for one project: its changed events' local days and the days the touched
# sessions had started on (their session figures live there), each an upsert by key.
_MARK_DAYS = """
    FOR changed_project IN SELECT DISTINCT c.project_id FROM changed_events c ORDER BY 1 LOOP
        SELECT p.timezone INTO project_timezone FROM projects p WHERE p.project_id = changed_project;
        CONTINUE WHEN project_timezone IS NULL;  -- no project, no row (as the joins of 0670)
        days := ARRAY(
            SELECT DISTINCT (c.occurred_at AT TIME ZONE project_timezone)::date
            FROM changed_events c WHERE c.project_id = changed_project
        );
        FOR touched IN
            SELECT DISTINCT c.session_id FROM changed_events c
            WHERE c.project_id = changed_project {touched_filter} ORDER BY 1
        LOOP
            -- EXECUTE: planned with this call's values every time. A cached generic plan, made
            -- while query_sessions was small, would scan the whole table for every session.
            EXECUTE 'SELECT started_at FROM query_sessions WHERE project_id = $1 AND session_id = $2'
            INTO previous_start USING changed_project, touched.session_id;
            -- (EXECUTE leaves FOUND alone; no row sets the target to NULL, and started_at never is.)
            IF previous_start IS NOT NULL THEN
                days := days || (previous_start AT TIME ZONE project_timezone)::date;
            END IF;
        END LOOP;
        FOR changed_day IN SELECT DISTINCT day FROM unnest(days) AS day ORDER BY 1 LOOP
            INSERT INTO query_rollup_days AS d (project_id, day) VALUES (changed_project, changed_day)
            ON CONFLICT (project_id, day) DO UPDATE SET changes = d.changes + 1, changed_at = EXCLUDED.changed_at;
        END LOOP;
    END LOOP;
"""

_DECLARATIONS = """
    changed_project bigint;
    project_timezone text;
    changed_day date;
    days date[];
    touched record;
    merged record;
    previous_start timestamptz;
    gone_start timestamptz;
    gone_end timestamptz;
"""


def upgrade() -> None:
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION query_sessions_note_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE {_DECLARATIONS}
        BEGIN
            {_MARK_DAYS.format(touched_filter="AND NOT c.is_bot")}
            FOR merged IN {_sessions_of("changed_events")} ORDER BY project_id, session_id LOOP
                INSERT INTO query_sessions AS s ({_COLUMNS}) VALUES ({_VALUES})
                ON CONFLICT (project_id, session_id) DO UPDATE SET {_MERGE};
            END LOOP;
            RETURN NULL;
        END
        $$
        """
    )
    remaining = (
        "(SELECT * FROM events e WHERE e.project_id = $1 AND e.session_id = $2"
        " AND e.occurred_at BETWEEN $3 AND $4) remaining"
    )
    recompute = _sessions_of(remaining).replace("'", "''")
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION query_sessions_note_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE {_DECLARATIONS}
        BEGIN
            {_MARK_DAYS.format(touched_filter="")}
            -- Each touched session again from the events left, which lie within its old span
            -- (so only the partitions of that span are read).
            FOR touched IN SELECT DISTINCT c.project_id, c.session_id FROM changed_events c ORDER BY 1, 2 LOOP
                -- EXECUTE, as for the lookup above: each statement planned with its own values.
                EXECUTE 'DELETE FROM query_sessions WHERE project_id = $1 AND session_id = $2'
                    ' RETURNING started_at, ended_at'
                INTO gone_start, gone_end USING touched.project_id, touched.session_id;
                CONTINUE WHEN gone_start IS NULL;
                FOR merged IN EXECUTE '{recompute}' USING touched.project_id, touched.session_id, gone_start, gone_end
                LOOP
                    INSERT INTO query_sessions ({_COLUMNS}) VALUES ({_VALUES});
                END LOOP;
            END LOOP;
            RETURN NULL;
        END
        $$
        """
    )


def downgrade() -> None:
    # These functions have the same effect as 0670's (only their shape differs), so they stay.
    pass
