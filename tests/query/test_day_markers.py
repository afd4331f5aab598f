"""One project's ingest batches of one day no longer wait for each other (migration 0800).

The insert trigger used to bump the (project, day) marker of query_rollup_days in every
inserting statement: the row stayed locked until the batch committed, so a project's batches of
a day committed one at a time (issue #18 item 3). Now an insert only creates a missing marker,
and what is not yet in a day's rollup is told by the query_rollup_pending rows and their `days`.
These tests hold one batch open and insert another of the same project and day, then check that
freshness and the refreshed rollups still come out exactly.
"""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.query import rollup_repository
from services.query.vocabulary import VISIT_DIMENSIONS
from tests.harness import DatabaseHarness
from tests.query.conftest import Event, berlin, build_rollups, insert_events, new_project
from tests.query.test_rollup_increments import cube_rows, rebuilt_from_scratch

_INSERT = (
    "INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path)"
    " VALUES (:p, :t, :u, 'pageview', :v, :s, 'https://example.com' || :path, 'example.com', :path)"
)


async def insert_uncommitted(connection: AsyncConnection, project_id: int, event: Event) -> None:
    await connection.execute(
        text(_INSERT),
        {
            "p": project_id,
            "t": event.occurred_at,
            "u": event.event_uuid,
            "v": event.distinct_id,
            "s": event.session_id,
            "path": event.path,
        },
    )


async def day_usable(engine: AsyncEngine, project_id: int, day: date, max_staleness_s: float) -> bool:
    async with engine.connect() as connection:
        states = await rollup_repository.day_states(connection, project_id, day, day, max_staleness_s)
    return states[day]


async def test_a_batch_does_not_wait_for_another_batch_of_the_same_day(
    db: DatabaseHarness, engine: AsyncEngine, admin_engine: AsyncEngine
) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, [Event("a", "sa", berlin("2026-01-13T09:00:00"))])
    async with admin_engine.connect() as first, engine.connect() as second:
        held = await first.begin()
        await insert_uncommitted(first, project_id, Event("b", "sb", berlin("2026-01-13T10:00:00"), "/docs"))
        # Before 0800 this insert waited for the first batch's lock on the Jan 13 marker and
        # failed here with "canceling statement due to lock timeout".
        async with second.begin():
            await second.execute(text("SET LOCAL lock_timeout = '1s'"))
            await insert_uncommitted(second, project_id, Event("c", "sc", berlin("2026-01-13T11:00:00"), "/blog"))
        await held.commit()
    async with engine.connect() as connection:
        count = await connection.execute(text("SELECT count(*) FROM events WHERE project_id = :p"), {"p": project_id})
        assert count.scalar_one() == 3
        markers = await connection.execute(
            text("SELECT day, changes, built_changes FROM query_rollup_days WHERE project_id = :p"), {"p": project_id}
        )
        assert [tuple(row) for row in markers] == [(date(2026, 1, 13), 1, None)]


async def test_freshness_follows_the_pending_rows(db: DatabaseHarness, engine: AsyncEngine) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    day = date(2026, 1, 13)
    await insert_events(engine, project_id, [Event("a", "sa", berlin("2026-01-13T09:00:00"))])
    # Never built: not usable whatever the staleness allowed.
    assert not await day_usable(engine, project_id, day, 3600)
    await build_rollups(engine, project)
    assert await day_usable(engine, project_id, day, 0)
    # 00:30 on Jan 14 in Berlin is 23:30Z on Jan 13: its pending row names Jan 14, not Jan 13.
    await insert_events(engine, project_id, [Event("b", "sb", berlin("2026-01-14T00:30:00"))])
    assert await day_usable(engine, project_id, day, 0)
    await insert_events(engine, project_id, [Event("c", "sc", berlin("2026-01-13T23:59:00"))])
    # A batch of the day waits: current no longer, still within an hour's staleness...
    assert not await day_usable(engine, project_id, day, 0)
    assert await day_usable(engine, project_id, day, 3600)
    # ...but not once it has waited longer than the staleness allowed (a refresher behind).
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE query_rollup_pending SET created_at = now() - interval '2 hours' WHERE project_id = :p"),
            {"p": project_id},
        )
    assert not await day_usable(engine, project_id, day, 3600)
    async with engine.connect() as connection:
        assert await rollup_repository.count_days_to_build(connection, project_id) == 2  # Jan 13, Jan 14
    await build_rollups(engine, project)
    assert await day_usable(engine, project_id, day, 0)
    async with engine.connect() as connection:
        assert await rollup_repository.count_days_to_build(connection, project_id) == 0


async def test_concurrent_batches_refresh_to_a_rebuilds_rows(
    db: DatabaseHarness, engine: AsyncEngine, admin_engine: AsyncEngine
) -> None:
    """Two batches of the same day in flight at once, committed in the other order, one of them
    after a refresh took the rest: the next refresh leaves exactly a rebuild's rows."""
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(
        engine,
        project_id,
        [Event("a", "sa", berlin("2026-01-13T09:00:00")), Event("a", "sa", berlin("2026-01-13T09:02:00"), "/x")],
    )
    await build_rollups(engine, project)
    async with admin_engine.connect() as first, engine.connect() as second:
        first_transaction = await first.begin()
        # Extends session sa (a merged session), and starts sd.
        await insert_uncommitted(first, project_id, Event("a", "sa", berlin("2026-01-13T09:05:00"), "/pricing"))
        await insert_uncommitted(first, project_id, Event("d", "sd", berlin("2026-01-13T12:00:00"), "/"))
        second_transaction = await second.begin()
        await insert_uncommitted(second, project_id, Event("b", "sb", berlin("2026-01-13T10:00:00"), "/docs"))
        await second_transaction.commit()
        # Takes the second batch only; the first is not committed.
        await build_rollups(engine, project)
        await first_transaction.commit()
    async with engine.connect() as connection:
        waiting = await connection.execute(
            text("SELECT count(*) FROM query_rollup_pending WHERE project_id = :p"), {"p": project_id}
        )
        assert waiting.scalar_one() == 2
    await build_rollups(engine, project)
    refreshed = await cube_rows(engine, project_id)
    totals = [
        row
        for row in refreshed["query_rollup_visits"]
        if row[0] == "2026-01-13" and row[1] == (1 << len(VISIT_DIMENSIONS)) - 1
    ]
    # day, grain (all visit dimensions), ... visitors, sessions, ..., pageviews, events, ...
    assert [(row[-7], row[-6], row[-3]) for row in totals] == [(3, 3, 5)]
    assert refreshed == await rebuilt_from_scratch(engine, project)


async def test_a_bulk_load_rebuilds_the_start_day_of_a_session_it_extends(
    db: DatabaseHarness, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk load's keys are dropped and its days rebuilt; the days come from its pending rows
    (markers no longer count inserts), and the start day of a session it extends across midnight
    is rebuilt too (the session's figures live there)."""
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(
        engine,
        project_id,
        [Event("a", "sa", berlin("2026-01-12T23:50:00")), Event("b", "sb", berlin("2026-01-13T08:00:00"))],
    )
    await build_rollups(engine, project)
    monkeypatch.setattr(rollup_repository, "MAX_MERGED_EVENTS", 1)
    monkeypatch.setattr(rollup_repository, "BULK_SHARE_OF_DAYS", 0.0)
    await insert_events(
        engine,
        project_id,
        [Event("a", "sa", berlin("2026-01-13T00:10:00"), "/docs"), Event("b", "sb", berlin("2026-01-13T08:01:00"))],
    )
    refresh = rollup_repository.ProjectToRefresh(project_id, "Europe/Berlin")
    async with engine.begin() as connection:
        outcome = await rollup_repository.refresh_project(connection, refresh, 100)
    assert outcome is not None
    # Jan 13 (the events' day) and Jan 12 (session sa's start day) rebuilt, nothing merged.
    assert (outcome.merged_events, outcome.merged_days, outcome.rebuilt_days) == (0, 0, 2)
    assert await cube_rows(engine, project_id) == await rebuilt_from_scratch(engine, project)
