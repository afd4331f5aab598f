from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, Index, Integer, LargeBinary, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class ReplayChunk(Base):
    """One batch of rrweb events, stored as the bytes the tracker sent.

    ``data`` keeps the request body's compression (usually gzip) so ingest never
    recompresses and the replay service can pass it through; its column storage is
    EXTERNAL (set in the migration) so Postgres does not try to compress it again.
    The key (project, session, seq) makes a retried chunk a no-op.
    """

    __tablename__ = "replay_chunks"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event_count: Mapped[int] = mapped_column(Integer)
    # Holds an rrweb full snapshot (type 2): a player can start here.
    has_full_snapshot: Mapped[bool] = mapped_column(Boolean)
    # "gzip" or "identity": how ``data`` is encoded.
    content_encoding: Mapped[str] = mapped_column(Text)
    byte_size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The distinct id the tracker sent this chunk under (a session may change id midway);
    # erasure deletes by it. None for chunks stored before it was recorded.
    distinct_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("seq >= 0", name="seq_non_negative"),
        CheckConstraint("content_encoding IN ('gzip', 'identity')", name="content_encoding_known"),
        Index("ix_replay_chunks_project_id_distinct_id", "project_id", "distinct_id"),
    )
