"""All SQL of erasing a person (GDPR art. 17) from one project. Callers own the transaction.

Run the steps in this order, in one transaction (services/replay/erasure.py does):
``person_days`` -> ``rollup_purge_repository.lock_days`` -> ``lock_person_sessions`` ->
``delete_idempotency_claims`` -> ``delete_recordings`` -> ``delete_session_urls`` -> ``delete_events`` ->
``rollup_purge_repository.purge_days``. Locks are taken in the order ingest takes them
(session rows before the rollups' day rows), so erasure and ingest never deadlock.

Every lookup goes through an index on (project_id, distinct_id) (events, replay_chunks,
replay_sessions), so the work is proportional to the person's data, not the project's.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import BigInteger, CursorResult, Text, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.rollup_purge_repository import (
    DAY_ROLLUP_TABLES,
    INCREMENT_TABLES,
    RETENTION_ROLLUP_TABLES,
    WEEK_ROLLUP_TABLES,
)

_PERSON_PARAMS = (bindparam("project_id", type_=BigInteger), bindparam("distinct_id", type_=Text))


async def _for_person(connection: AsyncConnection, sql: str, project_id: int, distinct_id: str) -> CursorResult[Any]:
    """Runs a statement about one person of one project (:project_id, :distinct_id)."""
    return await connection.execute(
        text(sql).bindparams(*_PERSON_PARAMS), {"project_id": project_id, "distinct_id": distinct_id}
    )


async def person_days(connection: AsyncConnection, project_id: int, distinct_id: str) -> list[date]:
    """The project's local days that hold an event of the person: their rollups hold the person."""
    result = await _for_person(
        connection,
        "SELECT DISTINCT (e.occurred_at AT TIME ZONE p.timezone)::date AS day"
        " FROM events e JOIN projects p ON p.project_id = e.project_id"
        " WHERE e.project_id = :project_id AND e.distinct_id = :distinct_id ORDER BY 1",
        project_id,
        distinct_id,
    )
    return list(result.scalars())


async def lock_person_sessions(connection: AsyncConnection, project_id: int, distinct_id: str) -> list[str]:
    """The person's recordings, locked until commit; their ids in key order.

    A recording is the person's when it was begun under their id (the session row's id) or
    when any of its chunks was sent under it (a visitor identified mid-recording). Never
    because an event names the session: anyone holding the public key can post an event
    naming another visitor's session under their own id.

    The row locks make ingest's upsert of these sessions wait until the erasure commits, then
    insert a fresh row: a chunk arriving meanwhile is never left without its session row.
    """
    result = await _for_person(
        connection,
        "SELECT session_id FROM replay_sessions"
        " WHERE project_id = :project_id AND (distinct_id = :distinct_id OR session_id IN"
        " (SELECT session_id FROM replay_chunks WHERE project_id = :project_id AND distinct_id = :distinct_id))"
        " ORDER BY session_id FOR UPDATE",
        project_id,
        distinct_id,
    )
    return list(result.scalars())


async def delete_idempotency_claims(connection: AsyncConnection, project_id: int, distinct_id: str) -> int:
    """The ingest idempotency keys of the person's events (before the events, which name them)."""
    result = await _for_person(
        connection,
        "DELETE FROM ingested_events WHERE project_id = :project_id AND event_uuid IN"
        " (SELECT event_uuid FROM events WHERE project_id = :project_id AND distinct_id = :distinct_id)",
        project_id,
        distinct_id,
    )
    return int(result.rowcount)


async def delete_session_urls(connection: AsyncConnection, project_id: int, distinct_id: str) -> int:
    """The URLs the person's sessions recorded under their id (event_session_urls); before the events.

    Found through the events' (project_id, distinct_id) index and the table's key: a row exists
    only while an event of that session, id and URL does (ingest adds it with the event,
    retention removes it with the events).
    """
    result = await _for_person(
        connection,
        "DELETE FROM event_session_urls WHERE project_id = :project_id AND distinct_id = :distinct_id"
        " AND session_id IN (SELECT session_id FROM events WHERE project_id = :project_id"
        " AND distinct_id = :distinct_id)",
        project_id,
        distinct_id,
    )
    return int(result.rowcount)


async def delete_recordings(
    connection: AsyncConnection, project_id: int, distinct_id: str, session_ids: list[str]
) -> tuple[int, int]:
    """Deletes the locked sessions with all their chunks, and any other chunk sent under the id.

    Returns (sessions, chunks).
    """
    sessions_param = bindparam("session_ids", type_=ARRAY(Text))
    chunks = await connection.execute(
        text(
            "DELETE FROM replay_chunks WHERE project_id = :project_id"
            " AND (session_id = ANY(:session_ids) OR distinct_id = :distinct_id)"
        ).bindparams(*_PERSON_PARAMS, sessions_param),
        {"project_id": project_id, "distinct_id": distinct_id, "session_ids": session_ids},
    )
    sessions = await connection.execute(
        text(
            "DELETE FROM replay_sessions WHERE project_id = :project_id AND session_id = ANY(:session_ids)"
        ).bindparams(_PERSON_PARAMS[0], sessions_param),
        {"project_id": project_id, "session_ids": session_ids},
    )
    return int(sessions.rowcount), int(chunks.rowcount)


async def delete_events(connection: AsyncConnection, project_id: int, distinct_id: str) -> int:
    # The delete trigger marks each affected day (and each touched session's start day) as
    # changed, and recomputes the touched `query_sessions` rows from the events left: a session
    # holding only the person's events is gone, one shared with another id keeps only theirs.
    result = await _for_person(
        connection,
        "DELETE FROM events WHERE project_id = :project_id AND distinct_id = :distinct_id",
        project_id,
        distinct_id,
    )
    return int(result.rowcount)


# Children before the project row; events before the rollups, since deleting events marks
# their days changed (the trigger inserts day markers while the project exists).
_PROJECT_TABLES = (
    "replay_chunks",
    "replay_sessions",
    "ingested_events",
    # Before events: a deleted event's session is recomputed from the events left (a trigger),
    # which is wasted work when every event of the project goes.
    "query_sessions",
    "event_session_urls",
    "events",
    *DAY_ROLLUP_TABLES,
    *WEEK_ROLLUP_TABLES,
    *RETENTION_ROLLUP_TABLES,
    *INCREMENT_TABLES,
    "query_rollup_pending",
    "query_rollup_days",
    "query_goals",
    "projects",
)


async def delete_project(connection: AsyncConnection, project_id: int) -> dict[str, int]:
    """Every row of the project, the project itself last; rows deleted per table.

    Take ``rollup_purge_repository.lock_days`` for the project's marked days first, so a
    rollup build in flight cannot write a day's rows back after they are gone.
    """
    deleted: dict[str, int] = {}
    for table in _PROJECT_TABLES:
        # The table names are the constants above, never input.
        result = await connection.execute(
            text(f"DELETE FROM {table} WHERE project_id = :project_id").bindparams(_PERSON_PARAMS[0]),
            {"project_id": project_id},
        )
        deleted[table] = int(result.rowcount)
    return deleted
