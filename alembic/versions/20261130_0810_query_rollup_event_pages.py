"""Event names per page and entry page, per two visit dimensions; domains per visit dimension.

An event-name query filtered by page (the Goals card's event goals, the Custom events card,
under a page chip) and a page query filtered by event name (the page goals under an event
chip) read the raw events: no rollup held an event's name and path together, and at 10M
events both answered 503. `query_rollup_event_pages` holds per day the events of each
(event name, page): the raw path's semantics, where one event must match both (an event named
`signup` on `/pricing`).

It holds event rows only (visitors as a sketch, pageviews, events; its session columns stay 0,
as in services/query/vocabulary.py's EVENT_PAGES_CUBE): the planner never asks it for a session
metric, so a refresh merges it from the new events alone and needs no session's set of
(name, page) pairs. One grain (no visit dimension): ~1,000 rows a day for the benchmark's
330,000 events a day (tools/bench/query.py), ~29,000 for the entry-page table below.

`query_rollup_entry_event_pages` holds the same rows per entry page of the event's session, for
the same cards under an entry-page chip (the query unions the event names or the pages it does
not name). A session's entry page only changes when an earlier event arrives, which makes the
refresher rebuild its days (0730), as for query_rollup_entry_pages. Its index by entry page
reads one chip's rows, not the day's (issues #19 and #15 item 4).

Two existing cubes get more grains, with no column or index change (their unique group indexes
of 0730 hold them as they are): `query_rollup_event_names` also per event name and each pair of
visit dimensions (the Custom events card and the event goals under two visit chips), and
`query_rollup_domains` per domain and one visit dimension (a domain under a visit chip).

Every day is marked never built (as 0770 did) so the refresher rebuilds it with the new rows;
until then the query path computes it from its events. On Citus the new tables are distributed
by project_id, co-located with events (as 0730's tables), so their refresh statements are router
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

# Each table with its fixed columns (all text) and its extra index, if any.
TABLES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("query_rollup_event_pages", ("event_name", "page"), ()),
    ("query_rollup_entry_event_pages", ("entry_page", "event_name", "page"), ("project_id", "entry_page", "day")),
)
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
    for table, fixed, extra_index in TABLES:
        op.create_table(
            table,
            sa.Column("project_id", sa.BigInteger(), nullable=False),
            sa.Column("day", sa.Date(), nullable=False),
            sa.Column("grain", sa.SmallInteger(), nullable=False),
            # An event always has a name; a session without a pageview has no entry page.
            *(sa.Column(column, sa.Text(), nullable=column != "event_name") for column in fixed),
            *(sa.Column(visit, sa.Text(), nullable=True) for visit in _VISIT_COLUMNS),
            sa.Column("visitors", Hll(), nullable=False),
            sa.Column("sessions", sa.BigInteger(), nullable=False),
            sa.Column("bounces", sa.BigInteger(), nullable=False),
            sa.Column("duration_s", sa.Float(), nullable=False),
            sa.Column("pageviews", sa.BigInteger(), nullable=False),
            sa.Column("events", sa.BigInteger(), nullable=False),
            sa.Column("session_pageviews", sa.BigInteger(), nullable=False),
        )
        op.create_index(f"ix_{table}_project_id_grain_day", table, ["project_id", "grain", "day"])
        if extra_index:
            op.create_index(f"ix_{table}_{'_'.join(extra_index)}", table, list(extra_index))
        # One row per group, for the refresher's merge (ON CONFLICT), as 0730 made for the other cubes.
        columns = ", ".join(("project_id", "day", "grain", *fixed, *_VISIT_COLUMNS))
        op.execute(f"CREATE UNIQUE INDEX ux_{table}_group ON {table} ({columns}) NULLS NOT DISTINCT")
    if citus_installed():
        op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
        for table, _, _ in TABLES:
            op.execute(f"SELECT create_distributed_table('{table}', 'project_id', colocate_with => 'events')")
    # A day's rows are replaced whole when it is rebuilt; none is merged into before that.
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")


def downgrade() -> None:
    for table, _, _ in reversed(TABLES):
        op.drop_table(table)
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")
