"""A day too large for one rebuild is built in pieces: its progress on its marker.

A rebuild reads the whole day in statements that must end within the refresher's statement
timeout (120 s); a day of a few million events (an import, a preload) never did, and its queries
read raw events forever. Such a day is built by successive merges of bounded time ranges of its
events into emptied rollups (services/query/rollup_repository.py, `build_day_piece`), one piece
per refresh, each committed. ``query_rollup_days.piece_until`` and ``piece_until_uuid`` are how
far it got (the day's events before that key, less those pending then, are in its rollups), ``piece_events`` how many
events that is, and ``piece_changes`` the day's ``changes`` when it began: a delete or a purge
bumps ``changes``, and the day starts over. All are NULL while no day is being built in pieces (and once it is built).

Revision ID: 1140
Revises: 1100
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "1140"
down_revision: str | None = "1100"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns without a default: no table rewrite; on Citus the ALTER is propagated to
    # the shards of the distributed table.
    op.add_column("query_rollup_days", sa.Column("piece_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("query_rollup_days", sa.Column("piece_until_uuid", sa.Uuid(), nullable=True))
    op.add_column("query_rollup_days", sa.Column("piece_changes", sa.BigInteger(), nullable=True))
    op.add_column("query_rollup_days", sa.Column("piece_events", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("query_rollup_days", "piece_events")
    op.drop_column("query_rollup_days", "piece_changes")
    op.drop_column("query_rollup_days", "piece_until_uuid")
    op.drop_column("query_rollup_days", "piece_until")
