"""Query rollups: page rows pre-unioned per complete week.

Top pages over 30 days unioned one HyperLogLog sketch per page per day, ~14,600 unions for
488 pages, and that union is the whole cost of the call (docs/benchmarks.md: 150 ms idle,
458 ms p95 under load with a country filter). A complete week's page rows, unioned once when
its days are built, cut a 30-day range to about 12 rows per page (the current week's days,
three or four weeks, the leading days). `query_rollup_weeks` records which day builds a
week's rows came from, so a day rebuilt later makes the week stale instead of wrong.

Revision ID: 0300
Revises: 0200
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0300"
down_revision: str | None = "0200"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILTER_COLUMNS = ("page", "referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")


class Hll(sa.types.UserDefinedType):
    """The `hll` extension's sketch type, defined here: a migration must not import live model code,
    which moves on while this revision stays as it was applied."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "hll"


def upgrade() -> None:
    op.create_table(
        "query_rollup_weeks",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("days_built_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "week", name=op.f("pk_query_rollup_weeks")),
    )
    op.create_table(
        "query_rollup_page_weeks",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("grain", sa.SmallInteger(), nullable=False),
        sa.Column("page", sa.Text(), nullable=False),
        sa.Column("referrer", sa.Text(), nullable=True),
        sa.Column("utm_source", sa.Text(), nullable=True),
        sa.Column("utm_medium", sa.Text(), nullable=True),
        sa.Column("utm_campaign", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("browser", sa.Text(), nullable=True),
        sa.Column("os", sa.Text(), nullable=True),
        sa.Column("device", sa.Text(), nullable=True),
        sa.Column("visitors", Hll(), nullable=False),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.Column("bounces", sa.BigInteger(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("pageviews", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("session_pageviews", sa.BigInteger(), nullable=False),
    )
    # Sketches inline, as for the daily rows (0101): no detoasting per union.
    op.execute("ALTER TABLE query_rollup_page_weeks ALTER COLUMN visitors SET STORAGE PLAIN")
    op.create_index(
        "ix_query_rollup_page_weeks_project_id_grain_week", "query_rollup_page_weeks", ["project_id", "grain", "week"]
    )
    for column in FILTER_COLUMNS:
        op.create_index(
            f"ix_query_rollup_page_weeks_project_id_grain_{column}_week",
            "query_rollup_page_weeks",
            ["project_id", "grain", column, "week"],
        )


def downgrade() -> None:
    op.drop_table("query_rollup_page_weeks")
    op.drop_table("query_rollup_weeks")
