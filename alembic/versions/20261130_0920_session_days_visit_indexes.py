"""Session days indexed by each visit column: page goals under two visit chips (issue #15).

Under two visit chips (e.g. country is DE, device is mobile) the Goals card's page goals are
read from ``query_rollup_session_days`` (0850's ``pages``; services/query/planner.py,
``session_day_plan``). Those rows were found by (project_id, day) alone, so every session day of
the range was read and filtered: 2.77M rows over 30 days at 10M events, 0.74-1.4 s p95.

Each visit column now has an index (project_id, day, <column>), the shape of 0820's exit-page
index. Under an ``is`` chip the planner reads the chip's session days from its index; under two,
at 10M events, it read one chip's index and filtered the other on the rows fetched (it did not
intersect the two with a BitmapAnd): 4.3 s -> 0.46-0.65 s p95 with the query's rewrite, still
over the 300 ms target (docs/benchmarks.md).
Duplicates are deduplicated in a B-tree (PostgreSQL 13+), so each index is a few bytes per row.
A page-per-pair-of-visit-dimensions cube was measured at ~850,000 rows a day (docs/benchmarks.md)
and is not built.

No new table and no new data: erasure and retention delete these rows already. On Citus the
table is distributed (0730); the indexes are propagated to its shards.

Revision ID: 0920
Revises: 0900
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0920"
down_revision: str | None = "0900"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VISIT_COLUMNS = ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")


def upgrade() -> None:
    for column in _VISIT_COLUMNS:
        op.create_index(
            f"ix_query_rollup_session_days_project_id_day_{column}",
            "query_rollup_session_days",
            ["project_id", "day", column],
        )


def downgrade() -> None:
    for column in reversed(_VISIT_COLUMNS):
        op.drop_index(f"ix_query_rollup_session_days_project_id_day_{column}", table_name="query_rollup_session_days")
