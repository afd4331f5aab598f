"""The staged and counted events of a refresh lose their project_id index (issue #15).

``query_rollup_events_staged`` (0820) and ``query_rollup_events_counted`` (1100) hold one
merge's rows, inside its transaction: written once, each read whole by the project's id, deleted
before the commit. Their index on ``project_id`` saved no statement anything (every reader wants
every row of the project, which is every live row of the table but a concurrent refresh's, and
the readers are hash joins and aggregates), while each staged row paid an index entry: the
staging statement cost 5.38 us per event with it and 3.53 without on a 111,296-event window of
the 5000-visitor load (tools.bench.stage_events; -22 to -34 % in three comparisons,
docs/benchmarks.md). Their readers now scan the table, as their deletes already did, and a
vacuum of them has no index to clean.

On Citus DROP INDEX is propagated to the shards.

Revision ID: 1170
Revises: 1160
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "1170"
down_revision: str | None = "1160"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "query_rollup_events_staged": "ix_query_rollup_events_staged_project_id",
    "query_rollup_events_counted": "ix_query_rollup_events_counted_project_id",
}


def upgrade() -> None:
    # Each table is empty outside a refresh: nothing to rebuild, a lock held for a moment.
    for index in _INDEXES.values():
        op.drop_index(index)


def downgrade() -> None:
    for table, index in _INDEXES.items():
        op.create_index(index, table, ["project_id"])
