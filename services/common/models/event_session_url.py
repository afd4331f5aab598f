"""Each session's distinct URLs, per visitor id: what the player's "URL contains" and page filters search.

The ingest writer adds a row the first time a session's visitor sends a URL (ON CONFLICT DO
NOTHING), so the trigram index grows with distinct URLs per session, not with events (migration
0840). Erasure and retention remove the rows with the events they come from.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Text, Uuid, func
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class EventSessionUrl(Base):
    __tablename__ = "event_session_urls"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    distinct_id: Mapped[str] = mapped_column(Text, primary_key=True)
    # md5(url) as a uuid: a URL may be 2,048 characters, too long for a btree key.
    url_hash: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    # The first event's occurred_at with this URL in the session (retention's cutoff applies to it).
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # The session list's search windows (newest day, week) and retention's cutoff.
        Index("ix_event_session_urls_project_id_first_seen", "project_id", "first_seen"),
        # "URL contains" and the page filter (pg_trgm; migration 0840 skips it without pg_trgm).
        Index(
            "ix_event_session_urls_url_trgm",
            func.lower(url),
            postgresql_using="gin",
            postgresql_ops={"lower_1": "gin_trgm_ops"},
        ),
    )
