"""Freshness of the query rollups per (project, local day); see services/query/rollup_repository.py.

`changes` is bumped by a trigger on events for every inserting or deleting statement that
touches the day; a day's cube rows are current when `built_changes = changes`.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, DateTime, func
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class QueryRollupDay(Base):
    __tablename__ = "query_rollup_days"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    changes: Mapped[int] = mapped_column(BigInteger, server_default="1")
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    built_changes: Mapped[int | None] = mapped_column(BigInteger)
    built_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
