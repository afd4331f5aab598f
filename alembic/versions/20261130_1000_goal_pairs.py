"""The saved page goals per pair of visit dimensions: the Goals card under two visit chips (issue #15).

Under two visit chips (e.g. country is DE, device is mobile) the Goals card's page goals were
read from the session days (0850's ``pages``, 0920's visit indexes): ~127k scattered session
days over 30 days at 10M events, 0.46-0.65 s p95 against the 300 ms target (docs/benchmarks.md).

``query_rollup_goal_pairs`` holds, per day, for each page of the project's saved page goals
(``query_goals`` kind ``page``) and each pair of visit dimensions (``grain``, GROUPING()'s bits
over the eight visit columns, as the cubes' grains), a visitor sketch of the session days that
hold the page: ~9,000 rows a day for the bench's five goal pages. A pair cube for every page
was ~850,000 rows a day; only saved goal pages are kept.

It is written from the session days alone (services/query/goal_pairs_repository.py), never
merged into: ``query_rollup_goal_pair_days`` records per day the day's ``built_at`` (set by
every merge into the day and every rebuild) and the goal pages its rows were made for. A query
reads a day's rows only while both still hold (the day not merged into or rebuilt since, every
listed page among those made); other rolled days are read from their session days, sketched.
The refresher remakes such days (not the project's latest day, which live ingest merges into)
after its merges.

Rows are filled here for the built days of projects with page goals, from the session days as
they are (their answers do not change), one day at a time: measured in docs/benchmarks.md.
Both tables go with their days (erasure, retention: rollup_purge's INCREMENT_TABLES); the
sketches are the only per-visitor data. On Citus both are distributed by project_id,
co-located with events.

Revision ID: 1000
Revises: 0960
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "1000"
down_revision: str | None = "0960"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VISITS = ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")
_PAIRS = ", ".join(
    f"(sd.{first}, sd.{second})" for index, first in enumerate(_VISITS) for second in _VISITS[index + 1 :]
)
_SD_VISITS = ", ".join(f"sd.{name}" for name in _VISITS)


class Hll(sa.types.UserDefinedType):
    """The `hll` extension's sketch type (as 0100 defines it: no model code in a migration)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "hll"


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


# As services/query/goal_pairs_repository writes them (kept apart: migrations import nothing
# from services/).
_FILL = (
    f"INSERT INTO query_rollup_goal_pairs (project_id, day, grain, page, {', '.join(_VISITS)}, visitors)"
    f" SELECT sd.project_id, sd.day, GROUPING({_SD_VISITS}), x.value, {_SD_VISITS},"
    " hll_add_agg(hll_hash_text(sd.distinct_id), 12)"
    " FROM query_rollup_session_days sd CROSS JOIN unnest(CAST(:pages AS text[])) AS x(value)"
    " WHERE sd.project_id = :project_id AND sd.day = :day AND x.value = ANY(sd.pages)"
    f" GROUP BY sd.project_id, sd.day, x.value, GROUPING SETS ({_PAIRS})"
)


def upgrade() -> None:
    op.create_table(
        "query_rollup_goal_pairs",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("grain", sa.Integer(), nullable=False),
        sa.Column("page", sa.Text(), nullable=False),
        *(sa.Column(name, sa.Text(), nullable=True) for name in _VISITS),
        sa.Column("visitors", Hll(), nullable=False),
    )
    op.create_table(
        "query_rollup_goal_pair_days",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pages", sa.ARRAY(sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "day", name="pk_query_rollup_goal_pair_days"),
    )
    if citus_installed():
        for table in ("query_rollup_goal_pairs", "query_rollup_goal_pair_days"):
            op.execute(f"SELECT create_distributed_table('{table}', 'project_id', colocate_with => 'events')")
    bind = op.get_bind()
    goal_pages = bind.execute(
        sa.text(
            "SELECT project_id, array_agg(DISTINCT value ORDER BY value) FROM query_goals WHERE kind = 'page'"
            " GROUP BY project_id"
        )
    ).all()
    # Day by day, so no statement holds more than a day's session days in memory; sorted (the
    # sketches' aggregate state is too big for a hash table per group).
    bind.execute(sa.text("SET LOCAL enable_hashagg = off"))
    for project_id, pages in goal_pages:
        days = bind.execute(
            sa.text(
                "SELECT day, built_at FROM query_rollup_days WHERE project_id = :project_id"
                " AND built_changes IS NOT NULL AND built_at IS NOT NULL ORDER BY day"
            ),
            {"project_id": project_id},
        ).all()
        for day, built_at in days:
            params = {"project_id": project_id, "day": day, "pages": list(pages)}
            bind.execute(sa.text(_FILL), params)
            bind.execute(
                sa.text(
                    "INSERT INTO query_rollup_goal_pair_days (project_id, day, built_at, pages)"
                    " VALUES (:project_id, :day, :built_at, :pages)"
                ),
                {**params, "built_at": built_at},
            )
    bind.execute(sa.text("RESET enable_hashagg"))
    # After the rows. A query reads one grain's rows of the listed pages per day; the refresher
    # deletes a day's rows.
    op.create_index(
        "ix_query_rollup_goal_pairs_project_id_grain_page_day",
        "query_rollup_goal_pairs",
        ["project_id", "grain", "page", "day"],
    )
    op.create_index("ix_query_rollup_goal_pairs_project_id_day", "query_rollup_goal_pairs", ["project_id", "day"])


def downgrade() -> None:
    op.drop_table("query_rollup_goal_pair_days")
    op.drop_table("query_rollup_goal_pairs")
