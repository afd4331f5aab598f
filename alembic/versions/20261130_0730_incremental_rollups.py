"""Incremental rollups: a day's refresh merges what arrived since the last one (issue #15).

A refresh used to rebuild each changed day from all its events: under live ingest today
changes every round, so its cost grew with the day. Now (services/query/rollup_repository.py):

- ``query_rollup_pending``: a statement-level trigger on events writes, per inserting statement
  and project, the keys of its new non-bot events. Committed with the events, so a refresh
  that takes (deletes) the rows it sees has exactly the events committed before it, and a batch
  still in flight is taken by the next refresh.
- ``query_rollup_sessions_folded``: each session as the rollups hold it (its figures, entry and
  exit, visit attributes, and the pages, domains and event names among its events), so a
  refresh can take the session's old contribution out of its start day's rows and put the new
  one in.
- ``query_rollup_session_days``: per (day, session, visitor) the pageviews and events folded,
  from which a day's exit-page rows are recomputed (a session's exit page moves its earlier
  events to another exit page, and a HyperLogLog sketch cannot take a visitor out).
- Unique indexes (NULLS NOT DISTINCT) on the cubes a refresh merges into, one row per group.
- A delete on events marks its days (and the start days of the sessions it touches) never
  built, so they are rebuilt from their events: deletions are not merged.

Every day is marked never built so the first refresh rebuilds it and fills the tables above.
On Citus the new tables are distributed by project_id, co-located with events, and the
triggers take the shape 0680 and 0700 describe (the transition table read alone, then
single-row statements by key).

Revision ID: 0730
Revises: 0720
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0730"
down_revision: str | None = "0720"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VISIT_COLUMNS = ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")
# The cubes merged into (the exit pages are recomputed per day), each with its fixed column.
_MERGED_CUBES = (
    ("query_rollup_visits", ()),
    ("query_rollup_pages", ("page",)),
    ("query_rollup_entry_pages", ("entry_page",)),
    ("query_rollup_hours", ("hour",)),
    ("query_rollup_domains", ("domain",)),
    ("query_rollup_event_names", ("event_name",)),
)
NEW_TABLES = ("query_rollup_pending", "query_rollup_sessions_folded", "query_rollup_session_days")


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


# One row per inserting statement and project: a loop of single-row inserts per session would
# double the work a large batch does on Citus (each one a routed statement).
_NOTE_PENDING = """
    CREATE FUNCTION query_rollup_note_pending() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        batch record;
    BEGIN
        FOR batch IN
            SELECT c.project_id,
                   array_agg(c.occurred_at ORDER BY c.occurred_at, c.event_uuid) AS occurred_at,
                   array_agg(c.event_uuid ORDER BY c.occurred_at, c.event_uuid) AS event_uuid
            FROM changed_events c WHERE NOT c.is_bot GROUP BY c.project_id ORDER BY 1
        LOOP
            INSERT INTO query_rollup_pending (project_id, occurred_at, event_uuid)
            VALUES (batch.project_id, batch.occurred_at, batch.event_uuid);
        END LOOP;
        RETURN NULL;
    END
    $$
"""

# Fires before query_sessions_after_delete (triggers fire in name order), so the touched
# sessions' start days are still those the rollups hold.
_NOTE_DELETES = """
    CREATE FUNCTION query_rollup_note_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        changed_project bigint;
        project_timezone text;
        changed_day date;
        days date[];
        touched record;
        previous_start timestamptz;
    BEGIN
        FOR changed_project IN SELECT DISTINCT c.project_id FROM changed_events c ORDER BY 1 LOOP
            SELECT p.timezone INTO project_timezone FROM projects p WHERE p.project_id = changed_project;
            CONTINUE WHEN project_timezone IS NULL;
            days := ARRAY(
                SELECT DISTINCT (c.occurred_at AT TIME ZONE project_timezone)::date
                FROM changed_events c WHERE c.project_id = changed_project
            );
            FOR touched IN
                SELECT DISTINCT c.session_id FROM changed_events c WHERE c.project_id = changed_project ORDER BY 1
            LOOP
                EXECUTE 'SELECT started_at FROM query_sessions WHERE project_id = $1 AND session_id = $2'
                INTO previous_start USING changed_project, touched.session_id;
                IF previous_start IS NOT NULL THEN
                    days := days || (previous_start AT TIME ZONE project_timezone)::date;
                END IF;
            END LOOP;
            FOR changed_day IN SELECT DISTINCT day FROM unnest(days) AS day ORDER BY 1 LOOP
                UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL
                WHERE project_id = changed_project AND day = changed_day;
            END LOOP;
        END LOOP;
        RETURN NULL;
    END
    $$
"""


def upgrade() -> None:
    op.create_table(
        "query_rollup_pending",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", postgresql.ARRAY(sa.DateTime(timezone=True)), nullable=False),
        sa.Column("event_uuid", postgresql.ARRAY(sa.Uuid()), nullable=False),
    )
    op.create_index("ix_query_rollup_pending_project_id", "query_rollup_pending", ["project_id"])
    op.create_table(
        "query_rollup_sessions_folded",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_uuid", sa.Uuid(), nullable=False),
        sa.Column("entry_uuid", sa.Uuid(), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pageviews", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("entry_page", sa.Text(), nullable=True),
        sa.Column("exit_page", sa.Text(), nullable=True),
        *(sa.Column(column, sa.Text(), nullable=True) for column in _VISIT_COLUMNS),
        sa.Column("pages", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("domains", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("event_names", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "session_id", name=op.f("pk_query_rollup_sessions_folded")),
    )
    op.create_index(
        "ix_query_rollup_sessions_folded_project_id_day", "query_rollup_sessions_folded", ["project_id", "day"]
    )
    op.create_table(
        "query_rollup_session_days",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("distinct_id", sa.Text(), nullable=False),
        sa.Column("pageviews", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "project_id", "day", "session_id", "distinct_id", name=op.f("pk_query_rollup_session_days")
        ),
    )
    # Rows of every day are rebuilt (below) before any is merged into: no duplicate groups.
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")
    for table, fixed in _MERGED_CUBES:
        columns = ", ".join(("project_id", "day", "grain", *fixed, *_VISIT_COLUMNS))
        op.execute(f"CREATE UNIQUE INDEX ux_{table}_group ON {table} ({columns}) NULLS NOT DISTINCT")
    if citus_installed():
        # As in 0700: Citus creates the triggers on every events shard.
        op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    op.execute(_NOTE_PENDING)
    op.execute(_NOTE_DELETES)
    op.execute(
        "CREATE TRIGGER query_rollup_pending_after_insert AFTER INSERT ON events"
        " REFERENCING NEW TABLE AS changed_events FOR EACH STATEMENT EXECUTE FUNCTION query_rollup_note_pending()"
    )
    op.execute(
        "CREATE TRIGGER query_rollup_pending_after_delete AFTER DELETE ON events"
        " REFERENCING OLD TABLE AS changed_events FOR EACH STATEMENT EXECUTE FUNCTION query_rollup_note_deletes()"
    )
    if citus_installed():
        op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
        for table in NEW_TABLES:
            op.execute(f"SELECT create_distributed_table('{table}', 'project_id', colocate_with => 'events')")


def downgrade() -> None:
    op.execute("DROP TRIGGER query_rollup_pending_after_delete ON events")
    op.execute("DROP TRIGGER query_rollup_pending_after_insert ON events")
    op.execute("DROP FUNCTION query_rollup_note_deletes()")
    op.execute("DROP FUNCTION query_rollup_note_pending()")
    for table, _ in _MERGED_CUBES:
        op.execute(f"DROP INDEX ux_{table}_group")
    for table in reversed(NEW_TABLES):
        op.drop_table(table)
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")
