"""Per-day cube of pages, with the visit dimensions that have few values (country, device).

Owned by the query service: rebuilt from events by services/query/rollup_repository.py.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, Float, Index, Table, Text

from services.common.models.base import Base
from services.common.models.query_rollup_visit import Hll

query_rollup_pages = Table(
    "query_rollup_pages",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    Column("page", Text, nullable=False),
    Column("country", Text),
    Column("device", Text),
    Column("visitors", Hll, nullable=False),
    Column("sessions", BigInteger, nullable=False),
    Column("bounces", BigInteger, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("pageviews", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("session_pageviews", BigInteger, nullable=False),
    Index("ix_query_rollup_pages_project_id_day", "project_id", "day"),
)
