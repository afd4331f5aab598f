"""Event names per page: goals and custom events under a page or event chip (issue #19, #15 item 4).

An event-name query filtered by page (the Goals card's event goals, the Custom events card,
under a page chip) and a page query filtered by event name (the page goals under an event
chip) read the raw events: no rollup held an event's name and path together, and at 10M
events both answered 503. `query_rollup_event_pages` holds per day the events of each
(event name, page): the raw path's semantics, where one event must match both (an event named
`signup` on `/pricing`).

It holds event rows only (visitors as a sketch, pageviews, events; its session columns stay 0,
as in services/query/vocabulary.py's EVENT_PAGES_CUBE): the planner never asks it for a session
metric, so a refresh merges it from the new events alone and needs no session's set of
(name, page) pairs. One grain (no visit dimension): a few hundred rows a day.

Every day is marked never built (as 0770 did) so the refresher rebuilds it with the new rows;
until then the query path computes it from its events. On Citus the table is distributed by
project_id, co-located with events (as 0730's tables), so its refresh statements are router
queries.

Revision ID: 0810
Revises: 0800
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0810"
down_revision: str | None = "0800"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "query_rollup_event_pages"
_VISIT_COLUMNS = ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")


class Hll(sa.types.UserDefinedType):
    """The `hll` extension's sketch type (a migration imports no live model code)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "hll"


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("grain", sa.SmallInteger(), nullable=False),
        sa.Column("event_name", sa.Text(), nullable=False),
        sa.Column("page", sa.Text(), nullable=True),
        *(sa.Column(visit, sa.Text(), nullable=True) for visit in _VISIT_COLUMNS),
        sa.Column("visitors", Hll(), nullable=False),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.Column("bounces", sa.BigInteger(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("pageviews", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("session_pageviews", sa.BigInteger(), nullable=False),
    )
    op.create_index(f"ix_{TABLE}_project_id_grain_day", TABLE, ["project_id", "grain", "day"])
    # One row per group, for the refresher's merge (ON CONFLICT), as 0730 made for the other cubes.
    columns = ", ".join(("project_id", "day", "grain", "event_name", "page", *_VISIT_COLUMNS))
    op.execute(f"CREATE UNIQUE INDEX ux_{TABLE}_group ON {TABLE} ({columns}) NULLS NOT DISTINCT")
    if citus_installed():
        op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
        op.execute(f"SELECT create_distributed_table('{TABLE}', 'project_id', colocate_with => 'events')")
    # A day's rows are replaced whole when it is rebuilt; none is merged into before that.
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")


def downgrade() -> None:
    op.drop_table(TABLE)
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")
