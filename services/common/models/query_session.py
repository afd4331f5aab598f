"""One row per session, kept current by triggers on events (migration 0600); read by the query service.

A session is its non-bot events under one session_id: its span (`started_at`..`ended_at`), its
first event's visit attributes, its entry and exit pages and its counts. The `*_uuid` and
`*_at` columns order events with equal timestamps the way the query SQL does, so that merging
a late batch into a row gives the same row as computing it from all events at once.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class QuerySession(Base):
    __tablename__ = "query_sessions"
    __table_args__ = (
        Index("ix_query_sessions_project_id_started_at", "project_id", "started_at"),
        Index("ix_query_sessions_project_id_ended_at", "project_id", "ended_at"),
        Index("ix_query_sessions_project_id_distinct_id", "project_id", "distinct_id"),
    )

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    distinct_id: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_uuid: Mapped[uuid.UUID] = mapped_column(Uuid)
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pageviews: Mapped[int] = mapped_column(Integer)
    events: Mapped[int] = mapped_column(Integer)
    entry_page: Mapped[str | None] = mapped_column(Text)
    entry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    entry_uuid: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    exit_page: Mapped[str | None] = mapped_column(Text)
    exit_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    exit_uuid: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    referrer: Mapped[str | None] = mapped_column(Text)
    utm_source: Mapped[str | None] = mapped_column(Text)
    utm_medium: Mapped[str | None] = mapped_column(Text)
    utm_campaign: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    browser: Mapped[str | None] = mapped_column(Text)
    os: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(Text)
