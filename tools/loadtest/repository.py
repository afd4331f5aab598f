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


async def stored_event_uuids(connection: AsyncConnection, project_id: int) -> dict[str, int]:
    """Each stored event uuid of the project with how many rows carry it (more than 1: a duplicate)."""
    result = await connection.execute(
        text("SELECT event_uuid::text AS uuid, count(*) AS n FROM events WHERE project_id = :project_id GROUP BY 1"),
        {"project_id": project_id},
    )
    return {str(row.uuid): int(row.n) for row in result}


async def stored_chunk_keys(connection: AsyncConnection, project_id: int) -> dict[tuple[str, int], int]:
    result = await connection.execute(
        text("SELECT session_id, seq, count(*) AS n FROM replay_chunks WHERE project_id = :project_id GROUP BY 1, 2"),
        {"project_id": project_id},
    )
    return {(str(row.session_id), int(row.seq)): int(row.n) for row in result}
