"""Erasure by distinct id: the id per replay chunk, and indexes that find a person's rows.

A recording's session row keeps the id of its first chunk; a visitor identified mid-session
sends later chunks under another id. Erasure must delete what was recorded under the erased
id, so each chunk now records the id it was sent under (nullable: chunks stored before this
migration have none, and erasure falls back to their session's id; no backfill, which would
rewrite the largest table in one statement).

Without an index on events (project_id, distinct_id), erasing a person scanned every event of
the project. ``events`` is partitioned, and Postgres 15 cannot build an index CONCURRENTLY on a
partitioned table, so the parent's index is created ON ONLY the parent (invalid, instant), each
partition's index is built CONCURRENTLY (ingest keeps writing), then attached; once every
partition's index is attached the parent's becomes valid. Partitions created later
(CREATE TABLE ... PARTITION OF events) get their index automatically.

Revision ID: 0400
Revises: 0310
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0400"
down_revision: str | None = "0310"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENTS_INDEX = "ix_events_project_id_distinct_id"
CHUNKS_INDEX = "ix_replay_chunks_project_id_distinct_id"


def upgrade() -> None:
    # A nullable column without a default: a catalog change only, no table rewrite.
    op.add_column("replay_chunks", sa.Column("distinct_id", sa.Text(), nullable=True))
    op.execute(f"CREATE INDEX IF NOT EXISTS {EVENTS_INDEX} ON ONLY events (project_id, distinct_id)")
    with op.get_context().autocommit_block():
        op.create_index(
            CHUNKS_INDEX,
            "replay_chunks",
            ["project_id", "distinct_id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        partitions = (
            op.get_bind()
            .execute(
                sa.text(
                    "SELECT child.relname FROM pg_inherits"
                    " JOIN pg_class parent ON parent.oid = pg_inherits.inhparent"
                    " JOIN pg_class child ON child.oid = pg_inherits.inhrelid"
                    " WHERE parent.relname = 'events' AND parent.relnamespace = 'public'::regnamespace"
                    " ORDER BY 1"
                )
            )
            .scalars()
            .all()
        )
        for partition in partitions:
            index = f"{partition}_project_id_distinct_id_idx"
            op.execute(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{index}" ON "{partition}" (project_id, distinct_id)')
            attached = op.get_bind().execute(
                sa.text(
                    "SELECT EXISTS (SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " JOIN pg_class p ON p.oid = i.inhparent WHERE c.relname = :index AND p.relname = :parent)"
                ),
                {"index": index, "parent": EVENTS_INDEX},
            )
            if not attached.scalar_one():
                op.execute(f'ALTER INDEX {EVENTS_INDEX} ATTACH PARTITION "{index}"')


def downgrade() -> None:
    # Dropping the parent's index drops every partition's with it.
    op.execute(f"DROP INDEX IF EXISTS {EVENTS_INDEX}")
    with op.get_context().autocommit_block():
        op.drop_index(CHUNKS_INDEX, table_name="replay_chunks", postgresql_concurrently=True, if_exists=True)
    op.drop_column("replay_chunks", "distinct_id")
