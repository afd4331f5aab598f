"""Which day builds a week's pre-unioned page rows were made from; see services/query/rollup_repository.py.

A week's rows are usable only while `days_built_at` equals the latest `built_at` of its days:
a day rebuilt since then makes the week stale until it is rebuilt too.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, DateTime
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class QueryRollupWeek(Base):
    __tablename__ = "query_rollup_weeks"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    week: Mapped[date] = mapped_column(Date, primary_key=True)  # the Monday
    days_built_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
