"""Query rollups: indexes for filtered page queries, and sketches stored inline.

Chosen with EXPLAIN (ANALYZE, BUFFERS) on 10M events (docs/benchmarks.md): a page rollup
query with one filter read every row of its grain for 30 days (~440k for page x country)
to keep 15k; an index per filterable column, after (project_id, grain), reads just those.
A dense HyperLogLog sketch (log2m 12) is ~2.6 kB, over the 2 kB TOAST threshold, so each
was compressed and moved out of line, and every union paid for detoasting; PLAIN keeps them
in the row (a rollup row stays far below the 8 kB page).

Revision ID: 0101
Revises: 0100
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0101"
down_revision: str | None = "0100"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILTER_COLUMNS = ("page", "referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")


def upgrade() -> None:
    for table in ("query_rollup_visits", "query_rollup_pages"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN visitors SET STORAGE PLAIN")
    with op.get_context().autocommit_block():
        for column in FILTER_COLUMNS:
            op.create_index(
                f"ix_query_rollup_pages_project_id_grain_{column}_day",
                "query_rollup_pages",
                ["project_id", "grain", column, "day"],
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for column in FILTER_COLUMNS:
            op.drop_index(
                f"ix_query_rollup_pages_project_id_grain_{column}_day",
                table_name="query_rollup_pages",
                postgresql_concurrently=True,
                if_exists=True,
            )
    for table in ("query_rollup_visits", "query_rollup_pages"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN visitors SET STORAGE EXTENDED")
