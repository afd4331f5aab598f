from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Text, Uuid, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class Event(Base):
    """One pageview or custom event, enriched at ingest.

    Range-partitioned by ``occurred_at``, one partition per UTC day (``events_pYYYYMMDD``,
    created ahead of time by ``services.common.partitions``; ``events_default`` catches
    the rare row outside every partition). Daily partitions let a dashboard range scan
    only its days and let retention drop whole days instead of deleting rows.
    Bots are stored flagged (``is_bot``) rather than dropped, so an operator can see how
    much bot traffic arrives; every query excludes them.
    """

    __tablename__ = "events"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    event_uuid: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # "pageview" for page views, any other name is a custom event.
    name: Mapped[str] = mapped_column(Text)
    distinct_id: Mapped[str] = mapped_column(Text)
    session_id: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    domain: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    referrer: Mapped[str | None] = mapped_column(Text)
    referrer_domain: Mapped[str | None] = mapped_column(Text)
    utm_source: Mapped[str | None] = mapped_column(Text)
    utm_medium: Mapped[str | None] = mapped_column(Text)
    utm_campaign: Mapped[str | None] = mapped_column(Text)
    utm_term: Mapped[str | None] = mapped_column(Text)
    utm_content: Mapped[str | None] = mapped_column(Text)
    browser: Mapped[str | None] = mapped_column(Text)
    browser_version: Mapped[str | None] = mapped_column(Text)
    os: Mapped[str | None] = mapped_column(Text)
    os_version: Mapped[str | None] = mapped_column(Text)
    # desktop, mobile, tablet, bot or other
    device_type: Mapped[str | None] = mapped_column(Text)
    # ISO 3166-1 alpha-2, upper case; no cities are derived or stored.
    country: Mapped[str | None] = mapped_column(Text)
    is_bot: Mapped[bool] = mapped_column(Boolean, server_default="false")
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")

    __table_args__ = (
        # Erasure finds a person's events through it (one index per partition).
        Index("ix_events_project_id_distinct_id", "project_id", "distinct_id"),
        # The session list's "URL contains" searches event_session_urls (migration 0840 dropped
        # the trigram index of 0610 on every event's lower(url)).
        # Funnels' visitor sample: the non-bot events of 1/8 of the visitors, keyed for index-only
        # reads per step (migration 0780; services/query/repository.py `funnel`).
        Index(
            "ix_events_funnel_sample",
            "project_id",
            "name",
            "path",
            text("(hashtext(distinct_id) & 511)"),
            "occurred_at",
            postgresql_include=["distinct_id"],
            postgresql_where=text("NOT is_bot AND (hashtext(distinct_id) & 7) = 0"),
        ),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )
