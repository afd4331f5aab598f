"""Rows as ingest's batch writer stores them, for tests that write through it or around it."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from services.ingest.repository import ChunkRow, EventRow


def event_row(project_id: int, **fields: Any) -> EventRow:
    """A pageview of https://example.com/ now, by "visitor" in "session", nothing enriched;
    `fields` replace any of it."""
    row = EventRow(
        project_id=project_id,
        occurred_at=datetime.now(UTC),
        event_uuid=uuid.uuid4(),
        name="pageview",
        distinct_id="visitor",
        session_id="session",
        url="https://example.com/",
        domain="example.com",
        path="/",
        title=None,
        referrer=None,
        referrer_domain=None,
        utm_source=None,
        utm_medium=None,
        utm_campaign=None,
        utm_term=None,
        utm_content=None,
        browser=None,
        browser_version=None,
        os=None,
        os_version=None,
        device_type=None,
        country=None,
        is_bot=False,
        properties={},
    )
    return msgspec.structs.replace(row, **fields)


def chunk_row(project_id: int, session_id: str, seq: int, **fields: Any) -> ChunkRow:
    """Chunk `seq` of a session by "visitor": one event now, `{}` as its data, a full snapshot
    when it is the first, one page and no click; `fields` replace any of it."""
    now = datetime.now(UTC)
    row = ChunkRow(
        project_id=project_id,
        session_id=session_id,
        seq=seq,
        first_timestamp=now,
        last_timestamp=now,
        event_count=1,
        has_full_snapshot=seq == 0,
        content_encoding="identity",
        data=b"{}",
        distinct_id="visitor",
        click_count=0,
        page_count=1,
        active_ms=0,
        first_url=None,
        country=None,
        browser=None,
        os=None,
        device_type=None,
    )
    return dataclasses.replace(row, **fields)
