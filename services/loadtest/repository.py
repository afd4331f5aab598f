"""The load test's SQL: what a run's project stored. Read directly from Postgres (admin URL)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


async def stored_rows(connection: AsyncConnection, project_id: int) -> dict[str, int]:
    result = await connection.execute(
        text(
            "SELECT (SELECT count(*) FROM events WHERE project_id = :project_id) AS events,"
            " (SELECT count(*) FROM replay_chunks WHERE project_id = :project_id) AS replay_chunks"
        ),
        {"project_id": project_id},
    )
    row = result.one()
    return {"events": int(row.events), "replay_chunks": int(row.replay_chunks)}
