"""Erasing a person (DELETE /v1/persons/{distinctId}): the decisions, no SQL.

Everything in one transaction, owned by the route's edge (provide_write_transaction, with the
service's server-side statement timeout): the answer is sent only once every row is gone, and
a timed-out or failed erasure leaves everything as it was, to be retried; a retry is the same
work, and erasing twice answers zeros. See docs/privacy.md.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from services.common import erasure_repository, rollup_purge_repository
from services.replay.schemas import PersonDeletion


async def erase_person(connection: AsyncConnection, project_id: int, distinct_id: str) -> PersonDeletion:
    # The days first: their rollups hold the person (in HyperLogLog sketches too, from which
    # nobody can be subtracted), so those rows go and the days are rebuilt from what is left.
    days = await erasure_repository.person_days(connection, project_id, distinct_id)
    # Before any row lock: a rollup builder holding a day's lock may wait for that day's row.
    await rollup_purge_repository.lock_days(connection, project_id, days)
    session_ids = await erasure_repository.lock_person_sessions(connection, project_id, distinct_id)
    claims = await erasure_repository.delete_idempotency_claims(connection, project_id, distinct_id)
    sessions, chunks = await erasure_repository.delete_recordings(connection, project_id, distinct_id, session_ids)
    urls = await erasure_repository.delete_session_urls(connection, project_id, distinct_id)
    events = await erasure_repository.delete_events(connection, project_id, distinct_id)
    rollups = await rollup_purge_repository.purge_days(connection, project_id, days)
    return PersonDeletion(
        distinct_id=distinct_id,
        deleted_events=events,
        deleted_sessions=sessions,
        deleted_chunks=chunks,
        deleted_rows={
            "events": events,
            "ingested_events": claims,
            "replay_sessions": sessions,
            "replay_chunks": chunks,
            "event_session_urls": urls,
            **rollups.by_table(),
        },
        rollup_days_to_rebuild=rollups.days_to_rebuild,
    )
