"""Goals: per project, a named page-visit or custom-event target the dashboard reports conversions for.

A goal is a definition (kind 'page' with a path, or 'event' with an event name), not data about
anyone: its conversions are counted from events (and the page and event-name rollups) when the
dashboard asks, so erasure and retention need nothing new. Keyed by (project_id, goal_id); one
goal per (project, kind, value).

On Citus the table is distributed by project_id, co-located with events, like every other
per-project table (0700).

Revision ID: 0750
Revises: 0730
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0750"
down_revision: str | None = "0730"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    op.create_table(
        "query_goals",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("goal_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("kind IN ('page', 'event')", name=op.f("ck_query_goals_kind")),
        sa.PrimaryKeyConstraint("project_id", "goal_id", name=op.f("pk_query_goals")),
        sa.UniqueConstraint("project_id", "kind", "value", name=op.f("uq_query_goals_project_id_kind_value")),
    )
    if citus_installed():
        op.execute("SELECT create_distributed_table('query_goals', 'project_id', colocate_with => 'events')")


def downgrade() -> None:
    op.drop_table("query_goals")
