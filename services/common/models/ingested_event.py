from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Uuid, func
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class IngestedEvent(Base):
    """Every event uuid a project has stored, so a retried batch is stored once.

    ``events`` cannot hold this uniqueness itself: a unique key on a partitioned table
    must include the partition key, and a retried event's ``occurred_at`` moves by a few
    milliseconds because clock-skew correction uses each request's own receive time.
    Rows older than the retry window are pruned.
    """

    __tablename__ = "ingested_events"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_uuid: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
