"""Rollups by domain and by event name, so those queries need not read raw events.

Both timed out (10 s) over 30 days of 10M events. A session counts once per domain and per
event name among its events (as once per page); the values are few, so each table holds its
column alone. Every day is marked changed so the refresher builds them.

Revision ID: 0660
Revises: 0650
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0660"
down_revision: str | None = "0650"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class Hll(sa.types.UserDefinedType):
    """The `hll` extension's sketch type (a migration imports no live model code)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "hll"


_TABLES = (
    ("query_rollup_domains", "domain", sa.Text(), True),
    ("query_rollup_event_names", "event_name", sa.Text(), False),
)


def upgrade() -> None:
    for name, column, column_type, nullable in _TABLES:
        op.create_table(
            name,
            sa.Column("project_id", sa.BigInteger(), nullable=False),
            sa.Column("day", sa.Date(), nullable=False),
            sa.Column("grain", sa.SmallInteger(), nullable=False),
            sa.Column(column, column_type, nullable=nullable),
            *(
                sa.Column(visit, sa.Text(), nullable=True)
                for visit in (
                    "referrer",
                    "utm_source",
                    "utm_medium",
                    "utm_campaign",
                    "country",
                    "browser",
                    "os",
                    "device",
                )
            ),
            sa.Column("visitors", Hll(), nullable=False),
            sa.Column("sessions", sa.BigInteger(), nullable=False),
            sa.Column("bounces", sa.BigInteger(), nullable=False),
            sa.Column("duration_s", sa.Float(), nullable=False),
            sa.Column("pageviews", sa.BigInteger(), nullable=False),
            sa.Column("events", sa.BigInteger(), nullable=False),
            sa.Column("session_pageviews", sa.BigInteger(), nullable=False),
        )
        op.create_index(f"ix_{name}_project_id_grain_day", name, ["project_id", "grain", "day"])
    op.execute("UPDATE query_rollup_days SET changes = changes + 1, changed_at = now()")


def downgrade() -> None:
    for name, _, _, _ in reversed(_TABLES):
        op.drop_table(name)
    op.execute("UPDATE query_rollup_days SET changes = changes + 1, changed_at = now()")
