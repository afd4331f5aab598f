"""Day markers no longer serialise a project's ingest: inserts create a missing marker only.

Since 0640 every inserting statement upserted its days' markers in query_rollup_days with
`ON CONFLICT DO UPDATE SET changes = changes + 1`: the (project, day) row stayed locked until the
batch committed (its WAL flush included), so one project's batches of a day committed one at a
time, no group commit, and one slow fsync stalled every writer behind it (issue #18 item 3;
`make bench-ingest`, 64 visitors: 0.72 of ingest's backends in `Lock:transactionid` before this
revision, 0.01 after, docs/benchmarks.md).

Since 0730 every inserting statement also writes a query_rollup_pending row, committed with the
events and taken by the refresh that merges them, so "this day has events not in its rollup" is
"a pending row touches this day": no counter is needed for inserts. Now:

- the insert trigger only creates the marker of a day that has none (`WHERE NOT EXISTS` from the
  statement's snapshot, then `ON CONFLICT DO NOTHING` for two batches creating the same new day:
  only those wait for each other, once a day). Deletes still bump `changes` (rare: erasure,
  retention, rebuild-forcing). Both shapes of 0710 (plain, and per shard under Citus) restated,
  the builder copied from 0710 (migrations are self-contained). Lock order unchanged: days, then
  sessions, each in key order (inserts now lock only the days they create).
- query_rollup_pending gets `days` (the local days, in the project's timezone, of the events of
  the row; not the start days of older sessions the batch extends, which would cost one lookup
  per session on Citus) and `created_at`. The refresher reads a day as usable only while no
  pending row touching it is older than the staleness allowed
  (services/query/rollup_repository.py). Rows already pending get their days here.
- query_rollup_note_pending fills them: one timezone lookup per project of the statement (the
  projects reference table; on Citus from the shard's trigger, as 0730's delete trigger does).

Revision ID: 0800
Revises: 0780
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0800"
down_revision: str | None = "0780"
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

    Ordered aggregates instead of joined DISTINCT ON subqueries (as 0670): no join, so no plan
    that could go quadratic on a transition table.
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

_DECLARATIONS = """
    events_table text;
    sessions_table text;
    days_table text;
    projects_table text;
    fired_shard bigint;
"""

# Which tables a call on a shard works on. On a Citus worker the trigger fires on an events
# shard, named `<table>_<shard id>`; the shards of the other tables on the same hash range are
# the co-located ones (so on this worker), and `projects`, a reference table, has one shard,
# copied to every node. shard_name() quotes as needed (%s in format(), not %I).
_FIND_TABLES = """
    IF TG_TABLE_NAME ~ '_[0-9]+$' AND to_regclass('pg_catalog.pg_dist_shard') IS NOT NULL THEN
        fired_shard := substring(TG_TABLE_NAME FROM '_([0-9]+)$')::bigint;
        SELECT shard_name('events'::regclass, e.shardid), shard_name('query_sessions'::regclass, s.shardid),
               shard_name('query_rollup_days'::regclass, d.shardid)
        INTO events_table, sessions_table, days_table
        FROM pg_dist_shard fired
        JOIN pg_dist_shard e ON e.logicalrelid = 'events'::regclass AND e.shardminvalue = fired.shardminvalue
        JOIN pg_dist_shard s ON s.logicalrelid = 'query_sessions'::regclass AND s.shardminvalue = fired.shardminvalue
        JOIN pg_dist_shard d ON d.logicalrelid = 'query_rollup_days'::regclass AND d.shardminvalue = fired.shardminvalue
        WHERE fired.shardid = fired_shard;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'query_sessions trigger: no co-located shards for %', TG_TABLE_NAME;
        END IF;
        SELECT shard_name('projects'::regclass, p.shardid) INTO projects_table
        FROM pg_dist_shard p WHERE p.logicalrelid = 'projects'::regclass;
    ELSE
        RAISE EXCEPTION 'query_sessions trigger fired on %, neither events nor one of its shards', TG_TABLE_NAME;
    END IF;
"""


def _mark_days(touched_filter: str, *, count: bool) -> str:
    """The changed events' local days and the days the touched sessions had started on (their
    session figures live there), one upsert in (project, day) order; no project, no row. Each
    touched session is looked up by key (LATERAL ... LIMIT 1 keeps it a lookup whatever the plan
    was made for), so a plan cached while query_sessions was small cannot scan it whole.

    count=False (inserts, since 0800): only the markers of days that have none are created; an
    existing marker is neither written nor locked (the NOT EXISTS reads it from the statement's
    snapshot, so the insert does not even wait for a refresher's or a delete's update of it), and
    concurrent batches of one project and day no longer commit one at a time. What they add is
    told by their query_rollup_pending rows (0730, `days` since 0800). count=True (deletes): the
    marker's `changes` is bumped, as before."""
    conflict = "DO UPDATE SET changes = d.changes + 1, changed_at = EXCLUDED.changed_at" if count else "DO NOTHING"
    missing = (
        ""
        if count
        else "WHERE NOT EXISTS (SELECT FROM {days} x WHERE x.project_id = days.project_id AND x.day = days.day)"
    )
    return f"""
        INSERT INTO {{days}} AS d (project_id, day)
        SELECT project_id, day FROM (
            SELECT c.project_id, (c.occurred_at AT TIME ZONE p.timezone)::date AS day
            FROM changed_events c JOIN {{projects}} p ON p.project_id = c.project_id
            UNION
            SELECT t.project_id, (s.started_at AT TIME ZONE p.timezone)::date
            FROM (SELECT DISTINCT c.project_id, c.session_id FROM changed_events c WHERE true {touched_filter}) t
            CROSS JOIN LATERAL (SELECT started_at FROM {{sessions}} s
                                WHERE s.project_id = t.project_id AND s.session_id = t.session_id LIMIT 1) s
            JOIN {{projects}} p ON p.project_id = t.project_id
        ) days {missing} ORDER BY 1, 2
        ON CONFLICT (project_id, day) {conflict}
    """


_NOTE_INSERTS = f"""
    {_mark_days("AND NOT c.is_bot", count=False)};
    INSERT INTO {{sessions}} AS s ({_COLUMNS})
    SELECT {_COLUMNS} FROM ({_sessions_of("changed_events")}) merged ORDER BY project_id, session_id
    ON CONFLICT (project_id, session_id) DO UPDATE SET {_MERGE};
"""


def _function(name: str, statements: str) -> str:
    """On plain Postgres the statements as they are (plpgsql caches their plans: planning them for
    every 8-event batch would cost more than running them); on a Citus shard the same statements
    on the co-located shards' names, EXECUTEd (a shard's names are known only at run time)."""
    plain = statements.format(events="events", sessions="query_sessions", days="query_rollup_days", projects="projects")
    on_shard = ";\n".join(
        f"EXECUTE format($statement${statement}$statement$, events_table, sessions_table, days_table, projects_table)"
        for statement in statements.format(events="%1$s", sessions="%2$s", days="%3$s", projects="%4$s").split(";")
        if statement.strip()
    )
    return f"""
        CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE {_DECLARATIONS}
        BEGIN
            IF TG_TABLE_NAME = 'events' THEN
                {plain}
            ELSE
                {_FIND_TABLES}
                {on_shard};
            END IF;
            RETURN NULL;
        END
        $$
    """


_NOTE_INSERTS_0710 = _NOTE_INSERTS.replace(
    _mark_days("AND NOT c.is_bot", count=False), _mark_days("AND NOT c.is_bot", count=True)
)


# As 0730's, plus the rows' local days. One row per inserting statement and project.
_NOTE_PENDING = """
    CREATE OR REPLACE FUNCTION query_rollup_note_pending() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        batch record;
        project_timezone text;
        batch_days date[];
    BEGIN
        FOR batch IN
            SELECT c.project_id,
                   array_agg(c.occurred_at ORDER BY c.occurred_at, c.event_uuid) AS occurred_at,
                   array_agg(c.event_uuid ORDER BY c.occurred_at, c.event_uuid) AS event_uuid
            FROM changed_events c WHERE NOT c.is_bot GROUP BY c.project_id ORDER BY 1
        LOOP
            SELECT p.timezone INTO project_timezone FROM projects p WHERE p.project_id = batch.project_id;
            -- Computed here, not in the INSERT: Citus takes no subquery in an INSERT ... VALUES.
            batch_days := ARRAY(
                SELECT DISTINCT (t AT TIME ZONE project_timezone)::date FROM unnest(batch.occurred_at) t
                WHERE project_timezone IS NOT NULL ORDER BY 1
            );
            INSERT INTO query_rollup_pending (project_id, occurred_at, event_uuid, days)
            VALUES (batch.project_id, batch.occurred_at, batch.event_uuid, batch_days);
        END LOOP;
        RETURN NULL;
    END
    $$
"""

# 0730's, for the downgrade.
_NOTE_PENDING_0730 = """
    CREATE OR REPLACE FUNCTION query_rollup_note_pending() RETURNS trigger LANGUAGE plpgsql AS $$
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


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    op.add_column(
        "query_rollup_pending",
        sa.Column("days", postgresql.ARRAY(sa.Date()), server_default=sa.text("'{}'::date[]"), nullable=False),
    )
    op.add_column(
        "query_rollup_pending",
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.execute(
        "UPDATE query_rollup_pending q SET days = ARRAY(SELECT DISTINCT (t AT TIME ZONE p.timezone)::date"
        " FROM unnest(q.occurred_at) t ORDER BY 1) FROM projects p WHERE p.project_id = q.project_id"
    )
    if citus_installed():
        # As in 0700: Citus propagates the functions to every worker.
        op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    op.execute(_NOTE_PENDING)
    op.execute(_function("query_sessions_note_inserts", _NOTE_INSERTS))


def downgrade() -> None:
    # Inserts bump the markers again: every day is read as changed until its next refresh.
    op.execute(_function("query_sessions_note_inserts", _NOTE_INSERTS_0710))
    op.execute(_NOTE_PENDING_0730)
    op.execute("UPDATE query_rollup_days SET changes = changes + 1, changed_at = now()")
    op.drop_column("query_rollup_pending", "created_at")
    op.drop_column("query_rollup_pending", "days")
