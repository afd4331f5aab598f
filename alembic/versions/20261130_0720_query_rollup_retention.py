"""Retention cohorts from a rollup: visitors counted per (first-seen day, first active day of a week).

`POST /v1/retention` read every session of the project (8.3 s on 10M events). A cohort cell
(first-seen week, week offset) over local days [from, to] counts the visitors first seen (ever)
on a day in [from, to] who have a session in the offset's week on a day <= to. So per visitor
and per week they have a session in, only two days matter: their first-seen day and the first
day of their sessions in that week. ``query_rollup_retention`` counts visitors per
(active_day, first_day), rows of a week built together by the query service's refresher from
``query_sessions`` (services/query/rollup_repository.py); a cell is a sum over a few hundred
rows. ``query_rollup_retention_weeks`` stamps each week with the latest day build it saw (the
rows of a week depend on every session up to its Sunday, through the first-seen days).

Counts only, no visitor ids. On Citus both are distributed by project_id, co-located with events
(the pattern of 0700).

Revision ID: 0720
Revises: 0710
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0720"
down_revision: str | None = "0710"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("query_rollup_retention", "query_rollup_retention_weeks")


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    op.create_table(
        "query_rollup_retention",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("active_day", sa.Date(), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=False),
        sa.Column("visitors", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "active_day", "first_day", name="pk_query_rollup_retention"),
    )
    op.create_table(
        "query_rollup_retention_weeks",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("days_built_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("built_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "week", name="pk_query_rollup_retention_weeks"),
    )
    if citus_installed():
        op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
        for table in TABLES:
            op.execute(f"SELECT create_distributed_table('{table}', 'project_id', colocate_with => 'events')")


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
