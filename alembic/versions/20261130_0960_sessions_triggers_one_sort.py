"""The sessions triggers sort a statement's events once, not once per session and column.

query_sessions_note_inserts / _deletes (0710, 0800) built each touched session's row with thirteen
ordered aggregates (`(array_agg(x ORDER BY occurred_at, event_uuid))[1]`, the entry's and exit's
with a pageview FILTER). Postgres 15 sorts the input of every ordered aggregate separately, group
by group: thirteen sorts per session of every inserting statement, each with its own sort setup.
Now the statement's rows are sorted once, by (project_id, session_id, occurred_at, event_uuid),
and window functions over that one sort number them: a session's first event is its row 1, its
entry the pageview whose running pageview count is 1, its exit the pageview whose running count
is the session's pageview count. Each of those is exactly one row of its session, so plain
FILTERed aggregates take its values; (occurred_at, event_uuid) breaks ties as before. The group
by (project_id, session_id) reads the window's output in that order (no second sort).

The same effect as 0710/0800 (tests/query/test_session_triggers.py compares every session with
what Python computes, on plain Postgres and on Citus), the same lock order, the same shapes on a
Citus shard (EXECUTEd on the co-located shards' names). The builder is 0800's, copied
(migrations are self-contained), with the new aggregation; `ordered_aggregates=True` gives the
old one for the downgrade. Measured in docs/benchmarks.md ("The sessions trigger sorts once"):
small at the writer's batch sizes, −0.005 to −0.02 ms of Postgres CPU per 8-event request, not
resolved by two locked slots; a bulk statement's sessions (thousands per statement) were not
measured.

Revision ID: 0960
Revises: 0920
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0960"
down_revision: str | None = "0920"
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


def _sessions_of(relation: str, *, ordered_aggregates: bool = False) -> str:
    """Session rows aggregated from the non-bot event rows of `relation`, in one grouping pass.

    Since 0960 the rows are sorted once, by session and (occurred_at, event_uuid), and numbered
    in that order by window functions over that one sort: the first event is the session's row
    1, the entry the row whose running pageview count is 1, the exit the pageview whose running
    count is the session's pageview count. Each of those is one row of its session, so plain
    FILTERed aggregates pick its values. ordered_aggregates=True is the shape of 0710/0800:
    thirteen ordered array_aggs, each sorting its session's rows again (Postgres 15 sorts every
    ordered aggregate's input separately, group by group).
    """
    if ordered_aggregates:
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
    first = "FILTER (WHERE position = 1)"
    entry = "FILTER (WHERE pageview AND pageviews_so_far = 1)"
    exit_ = "FILTER (WHERE pageview AND pageviews_so_far = pageviews_in_session)"
    first_columns = ", ".join(
        f"(array_agg({source}) {first})[1] AS {column}"
        for source, column in zip(_VISIT_SOURCES, _VISIT_COLUMNS, strict=True)
    )
    return f"""
        SELECT project_id, session_id, min(distinct_id) AS distinct_id, min(occurred_at) AS started_at,
               (array_agg(event_uuid) {first})[1] AS first_uuid, max(occurred_at) AS ended_at,
               count(*) FILTER (WHERE pageview) AS pageviews, count(*) AS events,
               (array_agg(path) {entry})[1] AS entry_page,
               (array_agg(occurred_at) {entry})[1] AS entry_at,
               (array_agg(event_uuid) {entry})[1] AS entry_uuid,
               (array_agg(path) {exit_})[1] AS exit_page,
               (array_agg(occurred_at) {exit_})[1] AS exit_at,
               (array_agg(event_uuid) {exit_})[1] AS exit_uuid,
               {first_columns}
        FROM (
            SELECT project_id, session_id, distinct_id, occurred_at, event_uuid, path, {", ".join(_VISIT_SOURCES)},
                   name = 'pageview' AS pageview,
                   count(*) OVER so_far AS position,
                   count(*) FILTER (WHERE name = 'pageview') OVER so_far AS pageviews_so_far,
                   count(*) FILTER (WHERE name = 'pageview') OVER in_session AS pageviews_in_session
            FROM {relation} WHERE NOT is_bot
            WINDOW in_session AS (PARTITION BY project_id, session_id ORDER BY occurred_at, event_uuid
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING),
                   so_far AS (PARTITION BY project_id, session_id ORDER BY occurred_at, event_uuid
                              ROWS UNBOUNDED PRECEDING)
        ) numbered
        GROUP BY project_id, session_id
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


def _note_inserts(*, ordered_aggregates: bool) -> str:
    return f"""
    {_mark_days("AND NOT c.is_bot", count=False)};
    INSERT INTO {{sessions}} AS s ({_COLUMNS})
    SELECT {_COLUMNS} FROM ({_sessions_of("changed_events", ordered_aggregates=ordered_aggregates)}) merged
    ORDER BY project_id, session_id
    ON CONFLICT (project_id, session_id) DO UPDATE SET {_MERGE};
"""


# Each touched session again from the events left, which lie within its old span (so only the
# partitions of that span are read), found by key for each session (LATERAL). As 0710.
_REMAINING = (
    "(SELECT e.* FROM gone g CROSS JOIN LATERAL (SELECT * FROM {events} e WHERE e.project_id = g.project_id"
    " AND e.session_id = g.session_id AND e.occurred_at BETWEEN g.started_at AND g.ended_at) e) remaining"
)


def _note_deletes(*, ordered_aggregates: bool) -> str:
    return f"""
    {_mark_days("", count=True)};
    WITH gone AS (
        DELETE FROM {{sessions}} s
        WHERE (s.project_id, s.session_id) IN (SELECT project_id, session_id FROM changed_events)
        RETURNING s.project_id, s.session_id, s.started_at, s.ended_at
    )
    INSERT INTO {{sessions}} ({_COLUMNS})
    SELECT {_COLUMNS} FROM ({_sessions_of(_REMAINING, ordered_aggregates=ordered_aggregates)}) rebuilt
    ORDER BY project_id, session_id;
"""


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def _replace(*, ordered_aggregates: bool) -> None:
    if citus_installed():
        # As in 0700/0800: Citus propagates the functions to every worker.
        op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    op.execute(_function("query_sessions_note_inserts", _note_inserts(ordered_aggregates=ordered_aggregates)))
    op.execute(_function("query_sessions_note_deletes", _note_deletes(ordered_aggregates=ordered_aggregates)))


def upgrade() -> None:
    _replace(ordered_aggregates=False)


def downgrade() -> None:
    _replace(ordered_aggregates=True)
