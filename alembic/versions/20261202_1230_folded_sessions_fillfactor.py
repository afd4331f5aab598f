"""The folded sessions' pages keep room for heap-only updates (issue #15, the refresher's CPU).

Every merge replaces each touched session's row in ``query_rollup_sessions_folded`` (an upsert of
the whole row, ~770 bytes with its pages, domains and event names): under the 5000-visitor load
5,000 rows each round. None of its indexed columns changes (the key, the start day, the visitor),
so the new version could stay on its page without index entries, but the pages were full: 13 % of
those updates were heap-only, the others wrote an entry in each of the table's three indexes.
With a fillfactor of 70 new pages keep ~2.4 kB free, and 82 % of the updates were heap-only in
a 5000-visitor run; the upsert took 0.34 s of CPU over the run's seven rounds against 0.50 s
(docs/benchmarks.md). The setting applies to pages filled from now on; existing pages are left
as they are (no rewrite). On Citus the storage parameter is propagated to every shard.

Revision ID: 1230
Revises: 1220
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "1230"
down_revision: str | None = "1220"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE query_rollup_sessions_folded SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE query_rollup_sessions_folded RESET (fillfactor)")
