from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Computed, DateTime, Index, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class ReplaySession(Base):
    """A recorded browser session, summarised as its chunks arrive.

    Kept current at ingest so a list of sessions never reads chunks, and a session of a
    single batch is listed with its real duration.
    """

    __tablename__ = "replay_sessions"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    distinct_id: Mapped[str] = mapped_column(Text)
    # First and last rrweb event timestamps seen in any chunk.
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(
        BigInteger,
        Computed("(EXTRACT(EPOCH FROM (ended_at - started_at)) * 1000)::bigint", persisted=True),
    )
    # Time with user input, gaps of inactivity removed.
    active_ms: Mapped[int] = mapped_column(BigInteger, server_default="0")
    click_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    page_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    first_url: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(Text)
    browser: Mapped[str | None] = mapped_column(Text)
    os: Mapped[str | None] = mapped_column(Text)
    device_type: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    total_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # The session list pages newest first by (started_at, session_id) within a project.
        Index("ix_replay_sessions_project_id_started_at_session_id", "project_id", "started_at", "session_id"),
        # A person's sessions, for GDPR deletion.
        Index("ix_replay_sessions_project_id_distinct_id", "project_id", "distinct_id"),
        # The session list's "URL contains" on the first URL (pg_trgm; migration 0610).
        Index(
            "ix_replay_sessions_first_url_trgm",
            func.lower(first_url),
            postgresql_using="gin",
            postgresql_ops={"lower_1": "gin_trgm_ops"},
        ),
    )
