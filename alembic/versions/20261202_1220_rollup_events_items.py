"""The events a merge takes, counted once per session day and path and per session day and name (issue #15).

Under the 5000-visitor load a merge's round of ~140,000 events was grouped again by four
statements: the session days' merge twice (per session day and path, per session day and name),
the pages and event-name cube merges once each (per session, visitor and path; and name), and
the staging of the touched sessions sorted the whole round by session for their distinct pages,
domains and names. Now one statement per merge counts the staged events per (day, session,
visitor, path) and per (day, session, visitor, name), in one pass with two grouping sets, into
``query_rollup_events_items`` (~50,000 rows per 140,000 events), and those four statements read
those rows (services/query/rollup_repository.py, ``_COUNT_ITEMS``). A row holds a path or a name,
never both (the other is NULL; neither is ever NULL in events).

As ``query_rollup_events_counted`` (1100, 1170): its rows live only inside the refresh's
transaction (written, read, deleted), so nothing in it outlives a refresh for erasure or
retention to purge; UNLOGGED, no index (every reader takes every row of its project). On Citus it
is distributed by project_id, co-located with events.

Revision ID: 1220
Revises: 1210
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "1220"
down_revision: str | None = "1210"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    op.create_table(
        "query_rollup_events_items",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("distinct_id", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("pageviews", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("(path IS NULL) <> (name IS NULL)", name=op.f("ck_query_rollup_events_items_path_or_name")),
        prefixes=["UNLOGGED"],
    )
    if citus_installed():
        op.execute(
            "SELECT create_distributed_table('query_rollup_events_items', 'project_id', colocate_with => 'events')"
        )


def downgrade() -> None:
    op.drop_table("query_rollup_events_items")
