"""Exit pages merged by session: each session day carries its session's exit page and visit (issue #15).

A merge recomputed the exit-page rollup rows of every day it touched from all of that day's
session days joined to their sessions, so a 500-event merge cost in proportion to the day
(2.3 s of Postgres CPU at 322k events). Now (services/query/rollup_repository.py) a merge
takes the touched sessions' old rows out and puts their new ones in (counts subtracted and
added), and recomputes only the visitor sketches of the exit pages those sessions left (a
HyperLogLog sketch cannot take a visitor out), reading just those pages' session days. For
that, each ``query_rollup_session_days`` row holds the exit page and visit attributes its
session had when the row was folded, indexed by (project_id, day, exit_page), and
``query_rollup_exit_pages`` gets the unique group index (NULLS NOT DISTINCT) the other merged
cubes have had since 0730.

A merge also read the events it takes from ``events`` by their keys once per statement (a
cube, the session days, the staged sessions: nine probes of the events index per event);
``query_rollup_events_staged`` now holds them, read once per merge. Like
``query_rollup_sessions_staged`` (0760) its rows live only inside the refresh's transaction
(written, read, deleted), so nothing in it outlives a refresh for erasure or retention to
purge; on Citus it is distributed by project_id, co-located with events.

The new columns are filled by rebuilding days, so every day is marked never built (as 0730 and
0770 did): until a day is rebuilt the query path computes it from its events. No new table:
erasure and retention already delete these rows with their days. On Citus the table is
distributed already (0730); the index and columns are propagated to its shards.

Revision ID: 0820
Revises: 0810
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0820"
down_revision: str | None = "0810"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VISIT_COLUMNS = ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    op.create_table(
        "query_rollup_events_staged",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("distinct_id", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("domain", sa.Text(), nullable=False),
    )
    op.create_index("ix_query_rollup_events_staged_project_id", "query_rollup_events_staged", ["project_id"])
    if citus_installed():
        op.execute(
            "SELECT create_distributed_table('query_rollup_events_staged', 'project_id', colocate_with => 'events')"
        )
    for column in ("exit_page", *_VISIT_COLUMNS):
        op.add_column("query_rollup_session_days", sa.Column(column, sa.Text(), nullable=True))
    op.create_index(
        "ix_query_rollup_session_days_project_id_day_exit_page",
        "query_rollup_session_days",
        ["project_id", "day", "exit_page"],
    )
    # One row per group, as the other merged cubes (0730).
    columns = ", ".join(("project_id", "day", "grain", "exit_page", *_VISIT_COLUMNS))
    op.execute(
        "CREATE UNIQUE INDEX ux_query_rollup_exit_pages_group ON query_rollup_exit_pages"
        f" ({columns}) NULLS NOT DISTINCT"
    )
    # Rows folded before hold no exit page: their days are rebuilt before any is merged into.
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")


def downgrade() -> None:
    op.execute("DROP INDEX ux_query_rollup_exit_pages_group")
    op.drop_table("query_rollup_events_staged")
    op.drop_index("ix_query_rollup_session_days_project_id_day_exit_page", table_name="query_rollup_session_days")
    for column in reversed(("exit_page", *_VISIT_COLUMNS)):
        op.drop_column("query_rollup_session_days", column)
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")
