"""Citus: distribute every per-project table by project_id, co-located; projects everywhere.

A no-op on plain Postgres. When the database has the ``citus`` extension (a coordinator made by
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

Revision ID: 0600
Revises: 0500
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0600"
down_revision: str | None = "0500"
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
)


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
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
