"""Citus: distribute every per-project table by project_id, co-located; projects everywhere.

On plain Postgres only the rollup trigger's function is restated (same effect, see
NOTE_CHANGES_FUNCTION). When the database has the ``citus`` extension (a coordinator made by
`sightline up --citus-workers N`, the compose ``citus`` profile, or any Citus install), the same
schema is spread over the workers:

- ``projects`` becomes a reference table: a copy on every node, so the join in the rollup
  trigger and the key lookups stay local wherever they run.
- ``events`` (with its daily partitions and ``events_default``), ``ingested_events``, the replay
  tables and the rollup tables are hash-distributed by ``project_id`` and co-located with
  ``events``: one project's rows of every table live in shards on the same worker, so every
  request (one project) is routed to one worker, and a statement that joins or writes two of
  these tables for one project stays on that worker. Partitions made later
  (services/common/partition_repository.py) are distributed by Citus as they are created.
- The rollup trigger on ``events`` (0100) stays as it is: Citus creates it on each events shard
  (``citus.enable_unsafe_triggers``), and what it writes, the same project's row of
  ``query_rollup_days``, is in the co-located shard on the same worker, which Citus lets a
  trigger reach (nested execution is refused only for other workers' shards).
- HLL: the ``hll`` extension must exist on every node before this runs (the superuser makes it;
  services/cli/citus.py, compose.yaml), since the sketches are built and unioned on the workers.
- Indexes and constraints defined before this revision are created on every shard by Citus;
  later index migrations run on the distributed tables unchanged (CONCURRENTLY is propagated).

Shards per table come from ``citus.shard_count`` (Citus's default, 32, in production; tests use
fewer). Distributing a table that holds rows copies them to the workers under a lock: on an
existing large single-node install, plan the move (docs/scaling.md).

Revision ID: 0700
Revises: 0680
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0700"
down_revision: str | None = "0680"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFERENCE_TABLES = ("projects",)
# The first is the co-location anchor; the others follow it.
DISTRIBUTED_TABLES = (
    "events",
    "ingested_events",
    "replay_sessions",
    "replay_chunks",
    "query_rollup_days",
    "query_rollup_visits",
    "query_rollup_pages",
    "query_rollup_weeks",
    "query_rollup_page_weeks",
    "query_sessions",
    "query_rollup_entry_pages",
    "query_rollup_exit_pages",
    "query_rollup_hours",
    "query_rollup_domains",
    "query_rollup_event_names",
)


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


# As in 0100, the same effect on both engines (so it is replaced on plain Postgres too), written
# in the shape Citus can run inside a trigger on an events shard on a worker:
# - the transition table is read alone: Citus cannot plan it together with a Citus table
#   (such as projects), but a query on it alone is plain Postgres;
# - each (project, day) is then one single-row upsert, which Citus routes to the co-located
#   query_rollup_days shard on the same worker, in (project, day) order as before, so two
#   writers still take the rows' locks in one order;
# - changed_at is taken from the inserted row (its default, now(), the same transaction time):
#   Citus refuses functions that are not immutable in DO UPDATE SET.
NOTE_CHANGES_FUNCTION = """
    CREATE OR REPLACE FUNCTION query_rollup_note_changes() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        changed_project bigint;
        project_timezone text;
        changed_day date;
    BEGIN
        FOR changed_project IN SELECT DISTINCT c.project_id FROM changed_events c ORDER BY 1 LOOP
            SELECT p.timezone INTO project_timezone FROM projects p WHERE p.project_id = changed_project;
            CONTINUE WHEN project_timezone IS NULL;  -- as the join in 0100: no project, no row
            FOR changed_day IN
                SELECT DISTINCT (c.occurred_at AT TIME ZONE project_timezone)::date
                FROM changed_events c WHERE c.project_id = changed_project ORDER BY 1
            LOOP
                INSERT INTO query_rollup_days AS d (project_id, day) VALUES (changed_project, changed_day)
                ON CONFLICT (project_id, day) DO UPDATE SET changes = d.changes + 1, changed_at = EXCLUDED.changed_at;
            END LOOP;
        END LOOP;
        RETURN NULL;
    END
    $$
"""


def upgrade() -> None:
    op.execute(NOTE_CHANGES_FUNCTION)
    if not citus_installed():
        return
    # The rollup trigger on events is what makes Citus refuse to distribute it otherwise; kept for
    # the database too, so shard moves and splits later re-create it under the same rule.
    op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    op.execute(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET citus.enable_unsafe_triggers = on', current_database());"
        " END $$"
    )
    # Parallel work inside this one transaction: keep Citus on one connection per worker, so
    # DDL and the data copies of the tables below see each other.
    op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
    for table in REFERENCE_TABLES:
        op.execute(f"SELECT create_reference_table('{table}')")
    anchor, *followers = DISTRIBUTED_TABLES
    op.execute(f"SELECT create_distributed_table('{anchor}', 'project_id')")
    for table in followers:
        op.execute(f"SELECT create_distributed_table('{table}', 'project_id', colocate_with => '{anchor}')")


def downgrade() -> None:
    if not citus_installed():
        return
    op.execute("SET LOCAL citus.enable_unsafe_triggers = on")
    op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
    # Back to local tables on the coordinator, rows and all.
    for table in (*reversed(DISTRIBUTED_TABLES), *REFERENCE_TABLES):
        op.execute(f"SELECT undistribute_table('{table}')")
