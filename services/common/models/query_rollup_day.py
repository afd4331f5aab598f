"""Freshness of the query rollups per (project, local day); see services/query/rollup_repository.py.

A trigger on events creates the marker of a day's first event and bumps `changes` for every
deleting statement that touches the day (since 0800 inserts do not: the events not yet in the
rollup are told by query_rollup_pending, and a marker locked by every batch serialised a
project's ingest). A day's cube rows are current when `built_changes = changes` and no pending
row touches the day.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, Date, DateTime, Uuid, func, text
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
    # Migration 0900: the day's exit-page items lag its session days (merges into the project's
    # latest day leave them; the refresher remakes them once a later day has events).
    exit_items_stale: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Migration 1140: a day too large for one rebuild, built in pieces (rollup_repository's
    # build_day_piece): its events before the key (`piece_until`, `piece_until_uuid`)
    # (`piece_events` of them) are in its rollups, built from `changes` = `piece_changes`. NULL
    # while not in pieces.
    piece_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    piece_until_uuid: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    piece_changes: Mapped[int | None] = mapped_column(BigInteger)
    piece_events: Mapped[int | None] = mapped_column(BigInteger)
