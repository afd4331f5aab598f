"""Query sessions: one row per session, kept current by triggers on events.

A session that crosses local midnight was counted once per day (the rollups and the raw SQL
both grouped events by (session, local day)). A session is now one row, keyed
(project_id, session_id), with its whole span, its first event's visit attributes (referrer,
UTM tags, country, browser, OS, device), its entry and exit pages and its counts. Both the raw
query path and the rollups read it (services/query/repository.py), so they agree.

Kept current by the inserting statement itself: a statement-level trigger merges the new
non-bot rows into their sessions (an upsert, ordered by key so concurrent batches never
deadlock), then marks as changed the local days of the new events and the days on which the
touched sessions had started (a session started yesterday and extended today changes
yesterday's session figures). A deleting statement recomputes its sessions from the events
left, within each session's old span. Dropping a partition fires no trigger: retention
deletes expired sessions itself (services/common/retention_repository.py).

This replaces the insert trigger of revision 0100 (which only marked days); the delete
trigger keeps marking days and now also repairs sessions.

Revision ID: 0640
Revises: 0610
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0640"
down_revision: str | None = "0610"
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
    """Session rows aggregated from the non-bot event rows of `relation`."""
    first_columns = ", ".join(
        f"f.{source} AS {column}" for source, column in zip(_VISIT_SOURCES, _VISIT_COLUMNS, strict=True)
    )
    return f"""
        SELECT a.project_id, a.session_id, a.distinct_id, f.occurred_at AS started_at, f.event_uuid AS first_uuid,
               a.ended_at, a.pageviews, a.events,
               en.path AS entry_page, en.occurred_at AS entry_at, en.event_uuid AS entry_uuid,
               ex.path AS exit_page, ex.occurred_at AS exit_at, ex.event_uuid AS exit_uuid, {first_columns}
        FROM (SELECT project_id, session_id, min(distinct_id) AS distinct_id, max(occurred_at) AS ended_at,
                     count(*) FILTER (WHERE name = 'pageview') AS pageviews, count(*) AS events
              FROM {relation} WHERE NOT is_bot GROUP BY project_id, session_id) a
        JOIN (SELECT DISTINCT ON (project_id, session_id) * FROM {relation} WHERE NOT is_bot
              ORDER BY project_id, session_id, occurred_at, event_uuid) f USING (project_id, session_id)
        LEFT JOIN (SELECT DISTINCT ON (project_id, session_id) project_id, session_id, path, occurred_at, event_uuid
              FROM {relation} WHERE NOT is_bot AND name = 'pageview'
              ORDER BY project_id, session_id, occurred_at, event_uuid) en USING (project_id, session_id)
        LEFT JOIN (SELECT DISTINCT ON (project_id, session_id) project_id, session_id, path, occurred_at, event_uuid
              FROM {relation} WHERE NOT is_bot AND name = 'pageview'
              ORDER BY project_id, session_id, occurred_at DESC, event_uuid DESC) ex USING (project_id, session_id)
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
    op.create_table(
        "query_sessions",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("distinct_id", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_uuid", sa.Uuid(), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pageviews", sa.Integer(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("entry_page", sa.Text(), nullable=True),
        sa.Column("entry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("entry_uuid", sa.Uuid(), nullable=True),
        sa.Column("exit_page", sa.Text(), nullable=True),
        sa.Column("exit_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_uuid", sa.Uuid(), nullable=True),
        *(sa.Column(column, sa.Text(), nullable=True) for column in _VISIT_COLUMNS),
        sa.PrimaryKeyConstraint("project_id", "session_id", name=op.f("pk_query_sessions")),
    )
    op.create_index("ix_query_sessions_project_id_started_at", "query_sessions", ["project_id", "started_at"])
    op.create_index("ix_query_sessions_project_id_ended_at", "query_sessions", ["project_id", "ended_at"])
    op.create_index("ix_query_sessions_project_id_distinct_id", "query_sessions", ["project_id", "distinct_id"])

    op.execute(f"INSERT INTO query_sessions ({_COLUMNS}) {_sessions_of('events')}")

    # A transition table has no statistics; the planner would join its per-session subqueries
    # with nested loops (quadratic in the batch's sessions), hence enable_nestloop off.
    # Days first, then sessions, in both functions and in key order: erasure (a delete) and
    # ingest (an insert) take their locks in the same order and never deadlock.
    op.execute(
        f"""
        CREATE FUNCTION query_sessions_note_inserts() RETURNS trigger LANGUAGE plpgsql
        SET enable_nestloop = off AS $$
        BEGIN
            -- The new events' days, and the days the touched sessions had started on before
            -- this statement extends them (their session figures live on those days).
            INSERT INTO query_rollup_days AS d (project_id, day)
            SELECT project_id, day FROM (
                SELECT c.project_id, (c.occurred_at AT TIME ZONE p.timezone)::date AS day
                FROM changed_events c JOIN projects p ON p.project_id = c.project_id
                UNION
                SELECT s.project_id, (s.started_at AT TIME ZONE p.timezone)::date
                FROM query_sessions s JOIN projects p ON p.project_id = s.project_id
                WHERE (s.project_id, s.session_id) IN
                    (SELECT project_id, session_id FROM changed_events WHERE NOT is_bot)
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
        CREATE FUNCTION query_sessions_note_deletes() RETURNS trigger LANGUAGE plpgsql
        SET enable_nestloop = off AS $$
        BEGIN
            INSERT INTO query_rollup_days AS d (project_id, day)
            SELECT project_id, day FROM (
                SELECT c.project_id, (c.occurred_at AT TIME ZONE p.timezone)::date AS day
                FROM changed_events c JOIN projects p ON p.project_id = c.project_id
                UNION
                SELECT s.project_id, (s.started_at AT TIME ZONE p.timezone)::date
                FROM query_sessions s JOIN projects p ON p.project_id = s.project_id
                WHERE (s.project_id, s.session_id) IN (SELECT project_id, session_id FROM changed_events)
            ) days ORDER BY 1, 2
            ON CONFLICT (project_id, day) DO UPDATE SET changes = d.changes + 1, changed_at = now();

            -- Each touched session again from the events left, which lie within its old span
            -- (so only the partitions of that span are read).
            WITH gone AS (
                DELETE FROM query_sessions s
                WHERE (s.project_id, s.session_id) IN (SELECT project_id, session_id FROM changed_events)
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
    op.execute("DROP TRIGGER query_rollup_after_insert ON events")
    op.execute(
        "CREATE TRIGGER query_sessions_after_insert AFTER INSERT ON events"
        " REFERENCING NEW TABLE AS changed_events FOR EACH STATEMENT EXECUTE FUNCTION query_sessions_note_inserts()"
    )
    op.execute("DROP TRIGGER query_rollup_after_delete ON events")
    op.execute(
        "CREATE TRIGGER query_sessions_after_delete AFTER DELETE ON events"
        " REFERENCING OLD TABLE AS changed_events FOR EACH STATEMENT EXECUTE FUNCTION query_sessions_note_deletes()"
    )
    # Every day's session figures change meaning: rebuild every rollup.
    op.execute("UPDATE query_rollup_days SET changes = changes + 1, changed_at = now()")


def downgrade() -> None:
    op.execute("DROP TRIGGER query_sessions_after_delete ON events")
    op.execute("DROP TRIGGER query_sessions_after_insert ON events")
    op.execute("DROP FUNCTION query_sessions_note_deletes()")
    op.execute("DROP FUNCTION query_sessions_note_inserts()")
    op.execute(
        "CREATE TRIGGER query_rollup_after_insert AFTER INSERT ON events"
        " REFERENCING NEW TABLE AS changed_events FOR EACH STATEMENT EXECUTE FUNCTION query_rollup_note_changes()"
    )
    op.execute(
        "CREATE TRIGGER query_rollup_after_delete AFTER DELETE ON events"
        " REFERENCING OLD TABLE AS changed_events FOR EACH STATEMENT EXECUTE FUNCTION query_rollup_note_changes()"
    )
    op.drop_table("query_sessions")
    op.execute("UPDATE query_rollup_days SET changes = changes + 1, changed_at = now()")
