"""Query sessions: the triggers set-based again, on the tables of their own shard under Citus.

0680 looked up and upserted one session at a time (an EXECUTE per session) so that Citus, which
runs a trigger of a distributed table on each shard on its worker, could route each statement.
Every one of those was a distributed plan on the worker, and the worker kept their memory until
the inserting statement ended: ~80 kB per event, 1.6 GB for a statement of 20k events (measured
in docs/scaling.md), until a worker was OOM-killed under `make bench-query`'s loader. And one
lookup plus one upsert per session cost single-node Postgres ~6x the insert itself.

Now each statement's transition table is merged in two set-based statements on both engines, as
0640 did: one upsert of the day markers, one upsert of the sessions (deletes: the day markers,
then one DELETE ... RETURNING of the touched sessions and one INSERT of them rebuilt from the
events left). Citus cannot plan a transition table together with a distributed table, so on a
worker the statements name the shards themselves: the trigger fires on an events shard, and the
co-located shards of query_sessions, query_rollup_days and events (same hash range, same
worker), and the projects reference table's shard, are found from Citus's metadata (synced to
every worker). Those are plain tables to the worker's Postgres: no distributed planning, no
per-session work, memory bounded by work_mem (sorts and hashes spill to disk). On plain Postgres
the names are the tables'. Citus allows the writes: the trigger runs in Citus's own connection
to the worker (or its local executor), where changing a shard is allowed.

On plain Postgres the statements are static SQL, whose plans plpgsql caches: planning them for
every 8-event batch would cost more than running them. The one that reads query_sessions looks
each touched session up by key (LATERAL ... LIMIT 1), so a plan cached while the table was small
cannot turn into a scan of the whole table (the reason 0680 EXECUTEd its lookup). On a shard
they are EXECUTEd, since the shards' names are known only at run time.
Same effect as 0640/0670/0680, same lock order (days, then sessions, each in key order).

Revision ID: 0710
Revises: 0700
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0710"
down_revision: str | None = "0700"
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


def _mark_days(touched_filter: str) -> str:
    """The changed events' local days and the days the touched sessions had started on (their
    session figures live there), one upsert in (project, day) order; no project, no row. Each
    touched session is looked up by key (LATERAL ... LIMIT 1 keeps it a lookup whatever the plan
    was made for), so a plan cached while query_sessions was small cannot scan it whole."""
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
        ) days ORDER BY 1, 2
        ON CONFLICT (project_id, day) DO UPDATE SET changes = d.changes + 1, changed_at = EXCLUDED.changed_at
    """


_NOTE_INSERTS = f"""
    {_mark_days("AND NOT c.is_bot")};
    INSERT INTO {{sessions}} AS s ({_COLUMNS})
    SELECT {_COLUMNS} FROM ({_sessions_of("changed_events")}) merged ORDER BY project_id, session_id
    ON CONFLICT (project_id, session_id) DO UPDATE SET {_MERGE};
"""

# Each touched session again from the events left, which lie within its old span (so only the
# partitions of that span are read), found by key for each session (LATERAL).
_REMAINING = (
    "(SELECT e.* FROM gone g CROSS JOIN LATERAL (SELECT * FROM {events} e WHERE e.project_id = g.project_id"
    " AND e.session_id = g.session_id AND e.occurred_at BETWEEN g.started_at AND g.ended_at) e) remaining"
)
_NOTE_DELETES = f"""
    {_mark_days("")};
    WITH gone AS (
        DELETE FROM {{sessions}} s
        WHERE (s.project_id, s.session_id) IN (SELECT project_id, session_id FROM changed_events)
        RETURNING s.project_id, s.session_id, s.started_at, s.ended_at
    )
    INSERT INTO {{sessions}} ({_COLUMNS})
    SELECT {_COLUMNS} FROM ({_sessions_of(_REMAINING)}) rebuilt ORDER BY project_id, session_id;
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


def upgrade() -> None:
    op.execute(_function("query_sessions_note_inserts", _NOTE_INSERTS))
    op.execute(_function("query_sessions_note_deletes", _NOTE_DELETES))


def downgrade() -> None:
    # These functions have the same effect as 0680's (only their shape differs), so they stay.
    pass
