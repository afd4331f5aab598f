"""Reading back what ingest stored for a browser session, straight from Postgres."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def fetch_all(admin_engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with admin_engine.connect() as connection:
        return list(await connection.execute(text(sql), params))


async def stored_events(admin_engine: AsyncEngine, project_id: object) -> list[Any]:
    return await fetch_all(
        admin_engine, "SELECT * FROM events WHERE project_id = :id ORDER BY occurred_at, name", id=project_id
    )


async def stored_chunks(admin_engine: AsyncEngine, project_id: object, session_id: str) -> list[Any]:
    return await fetch_all(
        admin_engine,
        "SELECT * FROM replay_chunks WHERE project_id = :id AND session_id = :session ORDER BY seq",
        id=project_id,
        session=session_id,
    )


async def stored_session(admin_engine: AsyncEngine, project_id: object, session_id: str) -> Any | None:
    rows = await fetch_all(
        admin_engine,
        "SELECT * FROM replay_sessions WHERE project_id = :id AND session_id = :session",
        id=project_id,
        session=session_id,
    )
    return rows[0] if rows else None


def chunk_json(chunk: Any) -> bytes:
    """A stored chunk's JSON body, whichever way the tracker encoded it."""
    data: bytes = chunk.data
    return gzip.decompress(data) if chunk.content_encoding == "gzip" else data


def chunk_events(chunk: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(chunk_json(chunk))["events"]
    return events


async def poll(check: Callable[[], Awaitable[bool]], timeout_s: float = 60, what: str = "the condition") -> None:
    """Waits until check() holds. The timeout only guards against hanging; no test asserts speed."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f}s")
        await asyncio.sleep(0.25)
