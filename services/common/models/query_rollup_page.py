"""Per-day rollup of pages, alone and with one visit dimension at a time (see `grain`).

Owned by the query service: rebuilt from events by services/query/rollup_repository.py.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, Float, Index, SmallInteger, Table, Text

from services.common.models.base import Base
from services.common.models.query_rollup_visit import Hll

query_rollup_pages = Table(
    "query_rollup_pages",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    Column("grain", SmallInteger, nullable=False),
    Column("page", Text, nullable=False),
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
    Index("ix_query_rollup_pages_project_id_grain_day", "project_id", "grain", "day"),
    # One per filterable column (migration 0101): a filtered page query reads only its rows.
    *(
        Index(f"ix_query_rollup_pages_project_id_grain_{column}_day", "project_id", "grain", column, "day")
        for column in (
            "page",
            "referrer",
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "country",
            "browser",
            "os",
            "device",
        )
    ),
)
