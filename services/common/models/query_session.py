"""One row per session, kept current by triggers on events (migration 0600); read by the query service.

A session is its non-bot events under one session_id: its span (`started_at`..`ended_at`), its
first event's visit attributes, its entry and exit pages and its counts. The `*_uuid` and
`*_at` columns order events with equal timestamps the way the query SQL does, so that merging
a late batch into a row gives the same row as computing it from all events at once.

`ended_hour` (migration 1180) is the UTC hour `ended_at` falls in, computed by Postgres; it is
indexed in place of `ended_at`, so that a batch extending a session within the hour changes no
indexed column and its update is heap-only (HOT): no entry in any of the table's indexes. A
reader bounding sessions by their end (`ended_at >= :start`) adds `ended_hour >=` the hour of
`:start` (`ended_hour_of`), which the index serves; the exact bound stays beside it.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Computed, DateTime, Index, Integer, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


def ended_hour_of(expression: str) -> str:
    """SQL for the UTC hour a timestamptz `expression` falls in, as `ended_hour` is computed
    (date_bin is immutable for timestamptz: its bins are absolute, from a UTC origin)."""
    return f"date_bin('1 hour', {expression}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"


def ended_at_or_after(start: str, *, alias: str = "") -> str:
    """SQL: the session (the row of `alias`, if given) ended at or after the timestamptz bind
    parameter or expression `start`: by its indexed hour, which the
    `(project_id, ended_hour)` index serves, and exactly."""
    row = f"{alias}." if alias else ""
    return f"{row}ended_hour >= {ended_hour_of(f'CAST({start} AS timestamptz)')} AND {row}ended_at >= {start}"


def ended_at_before(cutoff: str) -> str:
    """SQL: the session ended before the timestamptz `cutoff`: in the cutoff's hour or an earlier
    one (the index's bound), and exactly."""
    return f"ended_hour <= {ended_hour_of(f'CAST({cutoff} AS timestamptz)')} AND ended_at < {cutoff}"


class QuerySession(Base):
    __tablename__ = "query_sessions"
    __table_args__ = (
        Index("ix_query_sessions_project_id_started_at", "project_id", "started_at"),
        Index("ix_query_sessions_project_id_ended_hour", "project_id", "ended_hour"),
        Index("ix_query_sessions_project_id_distinct_id", "project_id", "distinct_id"),
    )

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    distinct_id: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_uuid: Mapped[uuid.UUID] = mapped_column(Uuid)
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_hour: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), Computed(ended_hour_of("ended_at"), persisted=True)
    )
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
