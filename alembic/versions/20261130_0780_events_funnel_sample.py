"""A visitor sample of the events that funnels read: a partial index over 1/8 of the visitors.

A funnel follows each visitor through the range's step events; exact, over ~900k visitors and
10M events, it takes seconds (docs/benchmarks.md). `POST /v1/funnel` answers big ranges from a
sample of visitors instead (services/query/repository.py `funnel`): the visitors whose
`hashtext(distinct_id) & 7` is 0, a stable choice (a visitor is always in or always out), kept
by this index as events arrive. Its keys hold what a funnel reads, so the read is index-only:

- (project_id, name, path): one range per step page or event name;
- `hashtext(distinct_id) & 511`: nested finer samples inside the 1/8 one. 1/2^k of the visitors
  (k = 4..9) are those where it is a multiple of 2^k (the k low bits 0): 1/64 where it is one of
  0, 64, ..., 448, 1/512 where it is 0; each rate reads only its own rows;
- occurred_at, and distinct_id included.

Only non-bot events of sampled visitors are in it: about 1/8 of the rows, so an insert pays the
predicate (one hash) and, for one event in eight, one more index entry.

It is an index, so erasure and retention need nothing: deleting the events deletes its entries.
On Citus the CREATE INDEX on the distributed events reaches every shard. On plain Postgres, as
in 0400, the parent's index is created ON ONLY the parent and each partition's CONCURRENTLY
(ingest keeps writing), then attached; partitions created later get it automatically.

Revision ID: 0780
Revises: 0770
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0780"
down_revision: str | None = "0770"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_events_funnel_sample"
COLUMNS = "(project_id, name, path, (hashtext(distinct_id) & 511), occurred_at) INCLUDE (distinct_id)"
PREDICATE = "NOT is_bot AND (hashtext(distinct_id) & 7) = 0"


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    if citus_installed():
        op.execute(f"CREATE INDEX IF NOT EXISTS {INDEX} ON events {COLUMNS} WHERE {PREDICATE}")
        return
    op.execute(f"CREATE INDEX IF NOT EXISTS {INDEX} ON ONLY events {COLUMNS} WHERE {PREDICATE}")
    with op.get_context().autocommit_block():
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
            index = f"{partition}_funnel_sample_idx"
            op.execute(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{index}" ON "{partition}" {COLUMNS} WHERE {PREDICATE}'
            )
            attached = op.get_bind().execute(
                sa.text(
                    "SELECT EXISTS (SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " JOIN pg_class p ON p.oid = i.inhparent WHERE c.relname = :index AND p.relname = :parent)"
                ),
                {"index": index, "parent": INDEX},
            )
            if not attached.scalar_one():
                op.execute(f'ALTER INDEX {INDEX} ATTACH PARTITION "{index}"')


def downgrade() -> None:
    # Dropping the parent's index drops every partition's with it.
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
