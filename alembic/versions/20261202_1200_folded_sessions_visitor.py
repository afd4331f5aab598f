"""Each folded session keeps its visitor: retention cohorts kept by the merges (issue #15).

A retention week's rows (0720: per week, visitors counted by the day of their first session in
the week and the day of their first session ever) were rebuilt from ``query_sessions`` every
time a day up to the week's Sunday was built: under live ingest, the current week in every
refresher round, ~7 us per visitor active in the week however few sessions had arrived.

``query_rollup_sessions_folded`` (0730) holds every session folded into the rollups by its
start day; with its visitor (the session's ``distinct_id``, as ``query_sessions`` holds it) it
is all a week's rows are made of. A merge now takes the rows of the visitors whose days it
changes out before it folds its sessions and puts them back after (per visitor, one lookup of
the ``(project_id, distinct_id, day)`` index below), and moves the week's stamp on; a week is
rebuilt whole only after a day rebuild, a purge or a merge that could not take its weeks'
locks (services/query/rollup_repository.py, "Retention cohorts").

The visitor is backfilled from ``query_sessions``. A folded row without a session row (none is
expected: erasure and retention purge the days of the sessions they delete) is dropped and its
day rebuilt. Every week's rows and stamps go, so each week is rebuilt once from the folded
sessions (until then `POST /v1/retention` reads raw sessions).

Revision ID: 1200
Revises: 1190
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "1200"
down_revision: str | None = "1190"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_query_rollup_sessions_folded_project_id_distinct_id_day"


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def _forget_retention_weeks() -> None:
    op.execute("DELETE FROM query_rollup_retention")
    op.execute("DELETE FROM query_rollup_retention_weeks")


def upgrade() -> None:
    if citus_installed():
        # The DDL and the multi-shard writes below on one connection per worker (as in 0720).
        op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
    op.add_column("query_rollup_sessions_folded", sa.Column("distinct_id", sa.Text(), nullable=True))
    op.execute(
        "UPDATE query_rollup_sessions_folded f SET distinct_id = q.distinct_id FROM query_sessions q"
        " WHERE q.project_id = f.project_id AND q.session_id = f.session_id"
    )
    op.execute(
        "UPDATE query_rollup_days d SET built_changes = NULL, built_at = NULL FROM query_rollup_sessions_folded f"
        " WHERE f.project_id = d.project_id AND f.day = d.day AND f.distinct_id IS NULL"
    )
    op.execute("DELETE FROM query_rollup_sessions_folded WHERE distinct_id IS NULL")
    op.alter_column("query_rollup_sessions_folded", "distinct_id", nullable=False)
    op.create_index(INDEX, "query_rollup_sessions_folded", ["project_id", "distinct_id", "day"])
    _forget_retention_weeks()


def downgrade() -> None:
    op.drop_index(INDEX, table_name="query_rollup_sessions_folded")
    op.drop_column("query_rollup_sessions_folded", "distinct_id")
    # Rebuilt from query_sessions, as before.
    _forget_retention_weeks()
