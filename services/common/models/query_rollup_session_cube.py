"""Rollups by entry page, exit page, local hour and event name (each alone and with one visit dimension) and domain.

A session has one entry page, one exit page and one start hour, so unlike the page rows these
add up across values. Owned by the query service: rebuilt by services/query/rollup_repository.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Date, Index, SmallInteger, Table, Text
from sqlalchemy.types import TypeEngine

from services.common.models.base import Base
from services.common.models.query_rollup_visit import group_index, visit_and_metric_columns


def _table(name: str, column: str, column_type: TypeEngine[Any], *, nullable: bool) -> Table:
    return Table(
        name,
        Base.metadata,
        Column("project_id", BigInteger, nullable=False),
        Column("day", Date, nullable=False),
        Column("grain", SmallInteger, nullable=False),
        Column(column, column_type, nullable=nullable),
        *visit_and_metric_columns(),
        Index(f"ix_{name}_project_id_grain_day", "project_id", "grain", "day"),
        # One row per group, merged into (migrations 0730; the exit pages since 0820).
        group_index(name, column),
    )


# A session without a pageview has no entry or exit page.
query_rollup_entry_pages = _table("query_rollup_entry_pages", "entry_page", Text(), nullable=True)
query_rollup_exit_pages = _table("query_rollup_exit_pages", "exit_page", Text(), nullable=True)
query_rollup_hours = _table("query_rollup_hours", "hour", SmallInteger(), nullable=False)
query_rollup_domains = _table("query_rollup_domains", "domain", Text(), nullable=True)
query_rollup_event_names = _table("query_rollup_event_names", "event_name", Text(), nullable=False)


def _event_rows_table(name: str, *fixed: str, index: tuple[str, ...] = ()) -> Table:
    """Event rows by several fixed columns (migration 0810): their session columns stay 0."""
    return Table(
        name,
        Base.metadata,
        Column("project_id", BigInteger, nullable=False),
        Column("day", Date, nullable=False),
        Column("grain", SmallInteger, nullable=False),
        *(Column(column, Text, nullable=column != "event_name") for column in fixed),
        *visit_and_metric_columns(),
        Index(f"ix_{name}_project_id_grain_day", "project_id", "grain", "day"),
        *((Index(f"ix_{name}_{'_'.join(index)}", *index),) if index else ()),
        group_index(name, *fixed),
    )


# Events per (event name, page), and per (entry page, event name, page) with an index by entry page.
query_rollup_event_pages = _event_rows_table("query_rollup_event_pages", "event_name", "page")
query_rollup_entry_event_pages = _event_rows_table(
    "query_rollup_entry_event_pages", "entry_page", "event_name", "page", index=("project_id", "entry_page", "day")
)
