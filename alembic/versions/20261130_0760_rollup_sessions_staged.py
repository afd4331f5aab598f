"""Rollup refresh: the sessions a merge or a day rebuild reads, staged once (issue #16).

A refresh merged every cube in one statement of data-modifying CTEs (0730), and a day rebuild
wrote every table in another, so every part read the sessions from one snapshot. Citus cannot
route such a statement: it ran each CTE as a distributed subplan and pulled the rows through
the coordinator. Now each table is written by a plain INSERT ... SELECT that Citus pushes down
to the project's co-located shards, one statement per table. Separate statements read
separate snapshots, and ingest updates query_sessions meanwhile; so the sessions are read
once, into this table (a merge: the touched sessions' new folded rows; a rebuild: the sessions
overlapping the day, with their visitor), and every cube, then query_rollup_sessions_folded, is
written from it (services/query/rollup_repository.py).

Its rows live only inside the refresh's transaction (written, read, deleted), so nothing here
outlives a refresh for erasure or retention to purge. On Citus it is distributed by project_id,
co-located with events.

Revision ID: 0760
Revises: 0750
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0760"
down_revision: str | None = "0750"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VISIT_COLUMNS = ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    op.create_table(
        "query_rollup_sessions_staged",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("distinct_id", sa.Text(), nullable=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_uuid", sa.Uuid(), nullable=False),
        sa.Column("entry_uuid", sa.Uuid(), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pageviews", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("entry_page", sa.Text(), nullable=True),
        sa.Column("exit_page", sa.Text(), nullable=True),
        *(sa.Column(column, sa.Text(), nullable=True) for column in _VISIT_COLUMNS),
        sa.Column("pages", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("domains", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("event_names", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "session_id", name=op.f("pk_query_rollup_sessions_staged")),
    )
    if citus_installed():
        op.execute(
            "SELECT create_distributed_table('query_rollup_sessions_staged', 'project_id', colocate_with => 'events')"
        )


def downgrade() -> None:
    op.drop_table("query_rollup_sessions_staged")
