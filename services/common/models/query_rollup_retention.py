"""Retention cohorts rolled up; see services/query/rollup_repository.py (retention weeks) and migration 0720.

`query_rollup_retention` counts visitors per (active_day, first_day): first_day is the local
day of the visitor's first session ever, active_day the first day of their sessions in the week
of active_day. A week's rows are usable only while its stamp in `query_rollup_retention_weeks`
(`days_built_at`) equals the latest `built_at` of the project's days up to that week's Sunday,
and those days are current.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, DateTime, func
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class QueryRollupRetention(Base):
    __tablename__ = "query_rollup_retention"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    active_day: Mapped[date] = mapped_column(Date, primary_key=True)
    first_day: Mapped[date] = mapped_column(Date, primary_key=True)
    visitors: Mapped[int] = mapped_column(BigInteger)


class QueryRollupRetentionWeek(Base):
    __tablename__ = "query_rollup_retention_weeks"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    week: Mapped[date] = mapped_column(Date, primary_key=True)  # the Monday
    days_built_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    built_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
