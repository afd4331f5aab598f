"""query_sessions indexed by the hour a session ended, not its end: its updates become heap-only.

Every ingest batch that extends a session moves its `ended_at` (the sessions trigger, 0960), and
`ended_at` was indexed (`(project_id, ended_at)`, 0640). A changed indexed column rules out a
heap-only (HOT) update, so each batch's update wrote a new entry in all four of the table's
indexes (its key, `started_at`, `ended_at`, `distinct_id`): 0 of 234,780 updates were HOT under
the 5000-visitor load (docs/benchmarks.md), every concurrent batch of a project inserted at the
right edge of the same `(project_id, ended_at)` leaf page, and every dead version left four index
entries for vacuum to clean.

`ended_hour`, a stored generated column, is the UTC hour `ended_at` falls in, and it is indexed
instead. A batch within the session's current hour changes no indexed column, so its update is
HOT whenever its page has room. The readers that bound sessions by their end
(`ended_at >= :start`, the retention purge's `ended_at < :cutoff`) add the same bound on
`ended_hour` (services/common/models/query_session.py, `ended_hour_of`), which the new index
serves; date_bin is monotone, so no session the exact bound keeps is lost.

The table's pages also keep a tenth free (`fillfactor` 90, set before the rewrite so that the
rewritten pages keep it too): a session's row is written by its first batch and rewritten by
each of the next ones, every few seconds while the visit goes on, and a HOT update needs room on
the row's own page, which a page filled by inserts alone does not have until its dead versions
are pruned (a refresh's long snapshot holds them back).

Adding a stored generated column rewrites the table (one pass, under an ACCESS EXCLUSIVE lock;
ingest's batches wait for it). On Citus the column and the index are propagated to every shard,
and each shard computes the column itself.

Revision ID: 1180
Revises: 1170
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "1180"
down_revision: str | None = "1170"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE query_sessions SET (fillfactor = 90)")
    op.execute(
        "ALTER TABLE query_sessions ADD COLUMN ended_hour timestamptz"
        " GENERATED ALWAYS AS (date_bin('1 hour', ended_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')) STORED"
    )
    op.create_index("ix_query_sessions_project_id_ended_hour", "query_sessions", ["project_id", "ended_hour"])
    op.drop_index("ix_query_sessions_project_id_ended_at", table_name="query_sessions")


def downgrade() -> None:
    op.create_index("ix_query_sessions_project_id_ended_at", "query_sessions", ["project_id", "ended_at"])
    op.drop_index("ix_query_sessions_project_id_ended_hour", table_name="query_sessions")
    op.drop_column("query_sessions", "ended_hour")
    op.execute("ALTER TABLE query_sessions RESET (fillfactor)")
