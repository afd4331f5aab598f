"""Per-day rollup of visits (each session on the day it started) by where they came from and who they were.

Owned by the query service: rebuilt from events by services/query/rollup_repository.py.
Core tables rather than mapped classes: the grain columns are nullable, so there is no key.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Date, Float, Index, SmallInteger, Table, Text
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import UserDefinedType

from services.common.models.base import Base


class Hll(UserDefinedType[Any]):
    """A HyperLogLog sketch of the `hll` extension (postgresql-15-hll)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "hll"


# So that reflection (Alembic's model/migration comparison) knows the type instead of warning.
ischema_names["hll"] = Hll


def visit_and_metric_columns() -> list[Column[Any]]:
    """The visit dimensions and the measures, the same in every rollup table (new objects per table)."""
    return [
        Column("referrer", Text),
        Column("utm_source", Text),
        Column("utm_medium", Text),
        Column("utm_campaign", Text),
        Column("country", Text),
        Column("browser", Text),
        Column("os", Text),
        Column("device", Text),
        Column("visitors", Hll, nullable=False),
        Column("sessions", BigInteger, nullable=False),
        Column("bounces", BigInteger, nullable=False),
        Column("duration_s", Float, nullable=False),
        Column("pageviews", BigInteger, nullable=False),
        Column("events", BigInteger, nullable=False),
        Column("session_pageviews", BigInteger, nullable=False),
    ]


_VISIT_COLUMN_NAMES = ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")


def group_index(name: str, *fixed: str) -> Index:
    """One row per group of a day (migration 0730): the incremental refresher merges into it."""
    return Index(
        f"ux_{name}_group",
        "project_id",
        "day",
        "grain",
        *fixed,
        *_VISIT_COLUMN_NAMES,
        unique=True,
        postgresql_nulls_not_distinct=True,
    )


query_rollup_visits = Table(
    "query_rollup_visits",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    # GROUPING() bit mask of the visit dimensions a row is not grouped by (its grouping set).
    Column("grain", SmallInteger, nullable=False),
    *visit_and_metric_columns(),
    Index("ix_query_rollup_visits_project_id_grain_day", "project_id", "grain", "day"),
    group_index("query_rollup_visits"),
)
