"""Rollups of pages, alone and with one visit dimension at a time (see `grain`): per local day,
and per complete week (Monday to Sunday) pre-unioned from those days.

Owned by the query service: rebuilt from events by services/query/rollup_repository.py.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, Index, SmallInteger, Table, Text

from services.common.models.base import Base
from services.common.models.query_rollup_visit import group_index, visit_and_metric_columns

# One index per filterable column (migrations 0101, 0300): a filtered page query reads only its rows.
FILTER_COLUMNS = ("page", "referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")


def _page_rollup_table(name: str, period: str) -> Table:
    """The same columns for both periods; `period` is the day, or the Monday of the week."""
    return Table(
        name,
        Base.metadata,
        Column("project_id", BigInteger, nullable=False),
        Column(period, Date, nullable=False),
        Column("grain", SmallInteger, nullable=False),
        Column("page", Text, nullable=False),
        *visit_and_metric_columns(),
        Index(f"ix_{name}_project_id_grain_{period}", "project_id", "grain", period),
        *(
            Index(f"ix_{name}_project_id_grain_{column}_{period}", "project_id", "grain", column, period)
            for column in FILTER_COLUMNS
        ),
        *((group_index(name, "page"),) if period == "day" else ()),
    )


query_rollup_pages = _page_rollup_table("query_rollup_pages", "day")
query_rollup_page_weeks = _page_rollup_table("query_rollup_page_weeks", "week")
