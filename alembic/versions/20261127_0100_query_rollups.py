"""Query rollups: per-day visit and page cubes with HyperLogLog visitors, and their freshness.

The dashboard's 30-day calls cannot scan ten million raw events in 300 ms on two cores, so
days are pre-aggregated, at several grains per day (`grain` is the GROUPING() bit mask of the
visit dimensions a row is not grouped by), (see services/query/rollup_repository.py). A statement-level
trigger on events counts changes per (project, local day), which tells the refresher which
days to rebuild and the query service which days it may read from the cubes; ingest needs no
change. HyperLogLog (Debian's postgresql-15-hll) is needed because unique visitors over many
days are not additive; the extension is created by the cluster's superuser when the stack is
set up (services/cli/postgres.py), since `hll` is not a trusted extension.

Revision ID: 0100
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0100"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class Hll(sa.types.UserDefinedType):
    """The `hll` extension's sketch type, defined here: a migration must not import live model code,
    which moves on while this revision stays as it was applied."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "hll"


def upgrade() -> None:
    # A no-op when the superuser already created it; on a cluster where the migrating role is
    # a superuser (docker's postgres image) it creates it. Checked before the statement, not
    # with IF NOT EXISTS: Citus handles every CREATE EXTENSION it sees (to make it on the
    # workers too) and refuses one from a role that does not own the extension, even a no-op.
    op.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'hll')"
        " THEN CREATE EXTENSION hll; END IF; END $$"
    )

    op.create_table(
        "query_rollup_days",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("changes", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("built_changes", sa.BigInteger(), nullable=True),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("project_id", "day", name=op.f("pk_query_rollup_days")),
    )
    op.create_table(
        "query_rollup_visits",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("grain", sa.SmallInteger(), nullable=False),
        sa.Column("referrer", sa.Text(), nullable=True),
        sa.Column("utm_source", sa.Text(), nullable=True),
        sa.Column("utm_medium", sa.Text(), nullable=True),
        sa.Column("utm_campaign", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("browser", sa.Text(), nullable=True),
        sa.Column("os", sa.Text(), nullable=True),
        sa.Column("device", sa.Text(), nullable=True),
        sa.Column("visitors", Hll(), nullable=False),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.Column("bounces", sa.BigInteger(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("pageviews", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("session_pageviews", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_query_rollup_visits_project_id_grain_day", "query_rollup_visits", ["project_id", "grain", "day"]
    )
    op.create_table(
        "query_rollup_pages",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("grain", sa.SmallInteger(), nullable=False),
        sa.Column("page", sa.Text(), nullable=False),
        sa.Column("referrer", sa.Text(), nullable=True),
        sa.Column("utm_source", sa.Text(), nullable=True),
        sa.Column("utm_medium", sa.Text(), nullable=True),
        sa.Column("utm_campaign", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("browser", sa.Text(), nullable=True),
        sa.Column("os", sa.Text(), nullable=True),
        sa.Column("device", sa.Text(), nullable=True),
        sa.Column("visitors", Hll(), nullable=False),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.Column("bounces", sa.BigInteger(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("pageviews", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("session_pageviews", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_query_rollup_pages_project_id_grain_day", "query_rollup_pages", ["project_id", "grain", "day"])

    # One upsert per (project, local day) per inserting statement. It takes that day's row
    # lock until the inserting transaction commits, which is what lets the refresher wait for
    # in-flight batches before it reads a day (services/query/rollup_repository.py).
    op.execute(
        """
        CREATE FUNCTION query_rollup_note_changes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO query_rollup_days AS d (project_id, day)
            SELECT DISTINCT c.project_id, (c.occurred_at AT TIME ZONE p.timezone)::date
            FROM changed_events c JOIN projects p ON p.project_id = c.project_id
            ORDER BY 1, 2
            ON CONFLICT (project_id, day) DO UPDATE SET changes = d.changes + 1, changed_at = now();
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER query_rollup_after_insert AFTER INSERT ON events"
        " REFERENCING NEW TABLE AS changed_events FOR EACH STATEMENT EXECUTE FUNCTION query_rollup_note_changes()"
    )
    op.execute(
        "CREATE TRIGGER query_rollup_after_delete AFTER DELETE ON events"
        " REFERENCING OLD TABLE AS changed_events FOR EACH STATEMENT EXECUTE FUNCTION query_rollup_note_changes()"
    )
    # Days that already hold events need building too.
    op.execute(
        "INSERT INTO query_rollup_days (project_id, day)"
        " SELECT DISTINCT e.project_id, (e.occurred_at AT TIME ZONE p.timezone)::date"
        " FROM events e JOIN projects p ON p.project_id = e.project_id"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER query_rollup_after_delete ON events")
    op.execute("DROP TRIGGER query_rollup_after_insert ON events")
    op.execute("DROP FUNCTION query_rollup_note_changes()")
    op.drop_table("query_rollup_pages")
    op.drop_table("query_rollup_visits")
    op.drop_table("query_rollup_days")
