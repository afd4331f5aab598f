from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Text, UniqueConstraint, Uuid, func
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class QueryGoal(Base):
    """A project's goal: a page path or a custom event name whose visitors the dashboard counts as conversions.

    A definition only; conversions are counted from events when asked (migration 0750).
    """

    __tablename__ = "query_goals"
    __table_args__ = (
        CheckConstraint("kind IN ('page', 'event')", name="kind"),
        UniqueConstraint("project_id", "kind", "value"),
    )

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    goal_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    # 'page': visited the path `value` (exactly); 'event': sent the custom event named `value`.
    kind: Mapped[str] = mapped_column(Text)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
