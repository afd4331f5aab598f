"""Each session day's pages and event names: goals and custom events under any chips (issues #15, #19).

The Goals card counts, per goal, the visitors with an event on the goal's page or of the goal's
name; the Custom events card counts visitors and events per event name. Under an exit-page
chip no cube held pages or event names with the exit page, and under two visit chips the pages
cube had no pair grain (about 850k rows a day as a cube): those read the raw events and ran
into the statement timeout at 10M events.

``query_rollup_session_days`` (per day, session and visitor; the session's exit page and visit
since 0820, moved by every merge that changes them) now also holds:

- ``pages``: the paths of the session's events on that day (each batch merged adds its
  distinct paths, so a path may repeat across batches; a count of distinct visitors does not
  mind);
- ``event_names``: the name of each of its events on that day other than pageviews (pageviews
  are the ``pageviews`` column), repeated once per event, so a merge appends and the events of
  a name are the count of its elements.

A query grouped by page or event name whose filters are on visit dimensions, the exit page
and that same dimension reads these rows (services/query/planner.py, ``session_day_plan``):
exact, any chip combination. No new table: erasure and retention delete these rows with their
days already, and on Citus the table is distributed (0730); the columns are propagated.

The columns are filled by rebuilding days, so every day is marked never built (as 0730, 0770
and 0820 did): until a day is rebuilt the query path computes it from its events.

Revision ID: 0850
Revises: 0840
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0850"
down_revision: str | None = "0840"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for column in ("pages", "event_names"):
        op.add_column("query_rollup_session_days", sa.Column(column, postgresql.ARRAY(sa.Text()), nullable=True))
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")


def downgrade() -> None:
    for column in ("event_names", "pages"):
        op.drop_column("query_rollup_session_days", column)
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")
