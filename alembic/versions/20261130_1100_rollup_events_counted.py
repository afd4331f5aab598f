"""The events a merge takes, counted per session, visitor, domain and hour (issue #15, the refresher's CPU).

Each of the eight cube merges read the staged events (``query_rollup_events_staged``, 0820)
and counted them per (day, session, visitor, the cube's event columns), and the touched sessions
were found by another pass over them: a pass over every event of the round per statement. Now
one statement per merge counts them per (day, session, visitor, domain, hour) into
``query_rollup_events_counted`` (under the 5000-visitor load 5,000 rows per 140,000 events), and
the visits, entry-page, hour and domain cube merges and the touched sessions read those rows
(services/query/rollup_repository.py).

Like the staged events its rows live only inside the refresh's transaction (written, read,
deleted), so nothing in it outlives a refresh for erasure or retention to purge; never committed,
it is UNLOGGED (no WAL for its rows; crash recovery empties it, which loses nothing). On Citus it
is distributed by project_id, co-located with events.

Revision ID: 1100
Revises: 1000
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "1100"
down_revision: str | None = "1000"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    op.create_table(
        "query_rollup_events_counted",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("distinct_id", sa.Text(), nullable=False),
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("hour", sa.SmallInteger(), nullable=False),
        sa.Column("pageviews", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        prefixes=["UNLOGGED"],
    )
    op.create_index("ix_query_rollup_events_counted_project_id", "query_rollup_events_counted", ["project_id"])
    if citus_installed():
        op.execute(
            "SELECT create_distributed_table('query_rollup_events_counted', 'project_id', colocate_with => 'events')"
        )


def downgrade() -> None:
    op.drop_table("query_rollup_events_counted")
