"""An exit-page x (page | event name) cube: goals, custom events and pages under an exit-page chip (issue #15).

Under an exit-page chip the Goals card (page and event goals) and the Custom events card read
the session days' pages and event names (0850), unnested and counted distinct: 0.66-1.4 s at
10M events (docs/benchmarks.md). ``query_rollup_exit_items`` holds, per day and exit page,
each page (kind ``p``) and each event name (kind ``e``, pageviews as ``pageview``) of the
session days under that exit page: a visitor sketch and, for event names, the events. It is
written from the session days only (services/query/rollup_repository.py): a rebuilt day's
rows from its session days; a merge subtracts the touched session days' events under their old
exit page and adds them under their new one, and rewrites the (day, exit page) pairs a session
left from those pairs' session days (a sketch cannot take a visitor out). That rewrite reads
every session day of the pairs left: on the day live ingest merges into, nearly the whole day
at every merge. So merges into a project's latest day leave its items alone and mark them
stale (``query_rollup_days.exit_items_stale``): queries read that day from its session days,
and the refresher remakes its items once a later day has events.

Rows are filled here from the session days as they are (the built days' answers do not
change), one day at a time: measured in docs/benchmarks.md. The table holds per-visitor
data only as sketches, deleted with their days by erasure and retention (rollup_purge).
On Citus it is distributed by project_id, co-located with events.

Revision ID: 0900
Revises: 0890
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0900"
down_revision: str | None = "0890"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class Hll(sa.types.UserDefinedType):
    """The `hll` extension's sketch type (as 0100 defines it: no model code in a migration)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "hll"


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


# As services/query/rollup_repository.exit_items_sql writes them (kept apart: migrations import
# nothing from services/).
_FILL = (
    "INSERT INTO query_rollup_exit_items (project_id, day, exit_page, kind, value, visitors, events)"
    " SELECT u.project_id, u.day, u.exit_page, u.kind, u.value, hll_add_agg(hll_hash_text(u.distinct_id), 12),"
    " sum(u.n) FROM ("
    "SELECT sd.project_id, sd.day, sd.exit_page, 'p' AS kind, x.value, sd.distinct_id, 0 AS n"
    " FROM query_rollup_session_days sd CROSS JOIN unnest(sd.pages) AS x(value) WHERE {where}"
    " UNION ALL SELECT sd.project_id, sd.day, sd.exit_page, 'e', x.value, sd.distinct_id, 1"
    " FROM query_rollup_session_days sd CROSS JOIN unnest(sd.event_names) AS x(value) WHERE {where}"
    " UNION ALL SELECT sd.project_id, sd.day, sd.exit_page, 'e', 'pageview', sd.distinct_id, sd.pageviews"
    " FROM query_rollup_session_days sd WHERE {where} AND sd.pageviews > 0"
    ") u GROUP BY u.project_id, u.day, u.exit_page, u.kind, u.value"
)


def upgrade() -> None:
    op.add_column(
        "query_rollup_days",
        sa.Column("exit_items_stale", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )
    op.create_table(
        "query_rollup_exit_items",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("exit_page", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("visitors", Hll(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
    )
    if citus_installed():
        op.execute(
            "SELECT create_distributed_table('query_rollup_exit_items', 'project_id', colocate_with => 'events')"
        )
    # Day by day, so no statement holds more than a day's session days in memory.
    days = op.get_bind().execute(
        sa.text("SELECT project_id, day FROM query_rollup_days WHERE built_changes IS NOT NULL ORDER BY 1, 2")
    )
    for project_id, day in days.all():
        where = "sd.project_id = :project_id AND sd.day = :day"
        op.get_bind().execute(sa.text(_FILL.format(where=where)), {"project_id": project_id, "day": day})
    # The indexes after the rows (faster than kept up row by row). One row per (exit page, kind,
    # value, day), in the order a query reads them: an exit page's rows of the listed values
    # (the goals) are found by the index alone, not filtered from all its values' rows. A session
    # without a pageview has no exit page. By day and exit page for the refresher's deletes.
    op.execute(
        "CREATE UNIQUE INDEX ux_query_rollup_exit_items_group ON query_rollup_exit_items"
        " (project_id, exit_page, kind, value, day) NULLS NOT DISTINCT"
    )
    op.create_index(
        "ix_query_rollup_exit_items_project_id_day_exit_page",
        "query_rollup_exit_items",
        ["project_id", "day", "exit_page"],
    )


def downgrade() -> None:
    op.drop_table("query_rollup_exit_items")
    op.drop_column("query_rollup_days", "exit_items_stale")
