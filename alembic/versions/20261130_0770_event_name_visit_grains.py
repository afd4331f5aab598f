"""Event-name rollups with each visit dimension: goal conversions and custom events under a filter.

query_rollup_event_names held each event name alone (0660), so an event-name query with any
visit filter (country, source, UTM tag, browser, OS, device) read the raw events and timed out
at 10M events: the dashboard's Goals and Custom events cards under a filter chip answered 503.
Its rows now also come per event name and one visit dimension (the `grain` bits, as in
query_rollup_entry_pages; services/query/vocabulary.py's EVENT_NAMES_CUBE).

The table already has the visit columns, its (project_id, grain, day) index and its unique
group index over (project_id, day, grain, event_name, visit columns) NULLS NOT DISTINCT (0730),
which hold the new grains' rows as they are: no column or index changes. The new rows are
built by rebuilding days, so every day is marked never built (as 0730 did): until a day is
rebuilt the query path computes it from its events, and the refresher rebuilds it. On Citus
nothing is created: the table is already distributed by project_id, co-located with events
(0700), and the UPDATE below is an ordinary multi-shard update of query_rollup_days.

The downgrade marks the days never built again, so the rebuild leaves the single grain only.

Revision ID: 0770
Revises: 0760
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0770"
down_revision: str | None = "0760"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A day's rows are replaced whole when it is rebuilt; none is merged into before that.
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")


def downgrade() -> None:
    op.execute("UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL")
