"""Funnels, retention cohorts, realtime, presets and the statement timeout; expected numbers by hand."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import rollup_purge_repository
from services.common.errors import DATABASE_OUTAGE
from services.query import rollup_repository
from services.query.app import create_app
from services.query.schemas import QuerySpec
from services.query.service import resolve_range
from services.query.settings import QuerySettings
from tests.harness import DatabaseHarness
from tests.query.conftest import (
    RANGE,
    Dataset,
    Event,
    auth,
    berlin,
    build_rollups,
    insert_events,
    new_project,
    query,
    retention_rows,
    table,
)


async def funnel(client: AsyncTestClient[Any], project: dict[str, Any], **spec: Any) -> list[list[Any]]:
    response = await client.post("/v1/funnel", json={**RANGE, **spec}, headers=auth(project))
    assert response.status_code == 200, response.text
    return [
        [step["visitors"], step["conversion_rate"], step["drop_off"], step["drop_off_rate"]]
        for step in response.json()["steps"]
    ]


async def test_funnel_counts_ordered_steps(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    steps = [
        {"type": "page", "value": "/"},
        {"type": "page", "value": "/pricing"},
        {"type": "event", "value": "signup"},
    ]
    # "/" is seen by v1, v2, v4 (the bot's "/" does not count); only v1 goes on to /pricing (10:01)
    # and signs up (10:05). v3 signs up too, but never saw "/".
    assert await funnel(client, dataset.project, steps=steps, window_minutes=60) == [
        [3, 100.0, 0, 0.0],
        [1, 33.33, 2, 66.67],
        [1, 33.33, 0, 0.0],
    ]
    # v1's signup comes 5 minutes after its "/": outside a 3-minute window
    assert await funnel(client, dataset.project, steps=steps, window_minutes=3) == [
        [3, 100.0, 0, 0.0],
        [1, 33.33, 2, 66.67],
        [0, 0.0, 1, 100.0],
    ]


async def test_funnel_of_eight_steps(client: AsyncTestClient[Any], db: DatabaseHarness, engine: AsyncEngine) -> None:
    project = await new_project(db)
    paths = ["/", "/a", "/b", "/c", "/d", "/e", "/f", "/g"]

    def visit(visitor: str, start: str, minutes: list[float], path_list: list[str]) -> list[Event]:
        at = berlin(start)
        return [
            Event(visitor, f"s-{visitor}", at + timedelta(minutes=offset), path)
            for offset, path in zip(minutes, path_list, strict=True)
        ]

    await insert_events(
        engine,
        int(project["id"]),
        [
            # a: all eight, a minute apart
            *visit("a", "2026-01-12T10:00:00", [0, 1, 2, 3, 4, 5, 6, 7], paths),
            # b: the eighth exactly 60 minutes after the first (the window's end is included)
            *visit("b", "2026-01-12T11:00:00", [0, 1, 2, 3, 4, 5, 6, 60], paths),
            # c: the eighth a second too late
            *visit("c", "2026-01-13T10:00:00", [0, 1, 2, 3, 4, 5, 6, 60 + 1 / 60], paths),
            # d: /b before /a, never after it: two steps
            *visit("d", "2026-01-13T11:00:00", [0, 1, 2, 3], ["/", "/b", "/a", "/c"]),
            # e: a "/" before the range does not start the funnel; the one inside does
            *visit("e", "2026-01-11T10:00:00", [0], ["/"]),
            *visit("e", "2026-01-14T10:00:00", [0, 1], ["/", "/a"]),
            # f: the funnel starts at the first "/": /a 61 minutes later is outside, though it is
            # 30 minutes after f's second "/"
            *visit("f", "2026-01-14T11:00:00", [0, 31, 61], ["/", "/", "/a"]),
            # g: /a at the same instant as "/" is not after it
            *visit("g", "2026-01-14T12:00:00", [0, 0], ["/", "/a"]),
            # a bot going through every step never counts
            *[
                replace(event, is_bot=True)
                for event in visit("bot", "2026-01-12T10:00:00", [0, 1, 2, 3, 4, 5, 6, 7], paths)
            ],
        ],
    )
    steps = [{"type": "page", "value": path} for path in paths]
    assert [row[0] for row in await funnel(client, project, steps=steps, window_minutes=60)] == [7, 5, 3, 3, 3, 3, 3, 2]
    # With a 7-minute window only a goes all the way; b, c stop after /f (6 minutes).
    assert [row[0] for row in await funnel(client, project, steps=steps, window_minutes=7)] == [7, 5, 3, 3, 3, 3, 3, 1]


async def test_funnel_steps_must_come_in_order(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    # v3: signup 12:00:30 then /checkout 12:02; v1 signs up but never checks out
    forward = [{"type": "event", "value": "signup"}, {"type": "page", "value": "/checkout"}]
    assert await funnel(client, dataset.project, steps=forward) == [[2, 100.0, 0, 0.0], [1, 50.0, 1, 50.0]]
    backward = [{"type": "page", "value": "/checkout"}, {"type": "event", "value": "signup"}]
    assert await funnel(client, dataset.project, steps=backward) == [[1, 100.0, 0, 0.0], [0, 0.0, 1, 100.0]]


async def test_funnel_needs_two_steps(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    response = await client.post(
        "/v1/funnel", json={**RANGE, "steps": [{"type": "page", "value": "/"}]}, headers=auth(dataset.project)
    )
    assert response.status_code == 422
    assert "steps" in response.json()["error"]["field"]


RETENTION_RANGE = {"period": "custom", "date_from": "2026-01-05", "date_to": "2026-01-28", "weeks": 8}


def retention_events() -> list[Event]:
    # Weeks (Mondays, Berlin): W1 Jan 5, W2 Jan 12, W3 Jan 19, W4 Jan 26.
    return [
        # r1: first seen W1, back in W2 and W4
        Event("r1", "a", berlin("2026-01-05T10:00:00")),
        Event("r1", "b", berlin("2026-01-13T10:00:00")),
        Event("r1", "c", berlin("2026-01-27T10:00:00")),
        # r2: W1 only (twice in the same week)
        Event("r2", "d", berlin("2026-01-07T10:00:00")),
        Event("r2", "e", berlin("2026-01-08T10:00:00")),
        # r3: first seen Monday Jan 12 00:30 in Berlin (still Sunday, W1, in UTC), back in W3
        Event("r3", "f", berlin("2026-01-12T00:30:00")),
        Event("r3", "g", berlin("2026-01-20T10:00:00")),
        # r4: W2 only
        Event("r4", "h", berlin("2026-01-13T11:00:00")),
        # r6 was first seen before the range: in no cohort, though active in W1
        Event("r6", "i", berlin("2025-12-20T10:00:00")),
        Event("r6", "j", berlin("2026-01-06T10:00:00")),
        # a bot is in no cohort
        Event("bot", "k", berlin("2026-01-06T10:00:00"), is_bot=True),
        Event("bot", "l", berlin("2026-01-14T10:00:00"), is_bot=True),
    ]


async def retention(client: AsyncTestClient[Any], project: dict[str, Any], **spec: Any) -> dict[str, Any]:
    response = await client.post("/v1/retention", json={**RETENTION_RANGE, **spec}, headers=auth(project))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def cohort_rows(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """As (week, visitors, [(week_offset, visitors, percentage), ...])."""
    return [
        (cohort["week"], cohort["visitors"], [tuple(week.values()) for week in cohort["retention"]])
        for cohort in body["cohorts"]
    ]


@pytest.mark.parametrize("source", ["events", "rollups"])
async def test_weekly_retention_cohorts(
    client: AsyncTestClient[Any], db: DatabaseHarness, engine: AsyncEngine, source: str
) -> None:
    project = await new_project(db)
    await insert_events(engine, int(project["id"]), retention_events())
    if source == "rollups":
        await build_rollups(engine, project)
    body = await retention(client, project)
    assert body["meta"] == {"source": source}
    cohorts = body["cohorts"]
    assert cohorts[1] == {
        "week": "2026-01-12",
        "visitors": 2,
        "retention": [
            {"week_offset": 0, "visitors": 2, "percentage": 100.0},
            {"week_offset": 1, "visitors": 1, "percentage": 50.0},
            {"week_offset": 2, "visitors": 0, "percentage": 0.0},
        ],
    }
    # As (week, visitors, [(week_offset, visitors, percentage), ...]): Jan 28 is in W4, so W1 has
    # offsets 0..3 so far and W2 0..2.
    assert cohort_rows(body) == [
        ("2026-01-05", 2, [(0, 2, 100.0), (1, 1, 50.0), (2, 0, 0.0), (3, 1, 50.0)]),
        ("2026-01-12", 2, [(0, 2, 100.0), (1, 1, 50.0), (2, 0, 0.0)]),
    ]
    # Ending on Tuesday Jan 13: r1's W4 visit and r3's W3 one are after it; r4 (Jan 13 11:00) is
    # in, r1's Jan 13 10:00 visit too. Weeks limited to 1 offset.
    assert cohort_rows(await retention(client, project, date_to="2026-01-13", weeks=1)) == [
        ("2026-01-05", 2, [(0, 2, 100.0), (1, 1, 50.0)]),
        ("2026-01-12", 2, [(0, 2, 100.0)]),
    ]
    # Starting on Wednesday Jan 7: r1 was first seen before it, so only r2 is W1's cohort; the
    # visitors first seen in W2 are the same as before.
    assert cohort_rows(await retention(client, project, date_from="2026-01-07")) == [
        ("2026-01-05", 1, [(0, 1, 100.0), (1, 0, 0.0), (2, 0, 0.0), (3, 0, 0.0)]),
        ("2026-01-12", 2, [(0, 2, 100.0), (1, 1, 50.0), (2, 0, 0.0)]),
    ]


async def test_retention_rollup_follows_late_events(
    client: AsyncTestClient[Any], db: DatabaseHarness, engine: AsyncEngine
) -> None:
    """An event arriving late, before a visitor's first one, moves their cohort: the weeks after
    it are stale (read from the sessions) until the refresher rebuilds them, then exact again."""
    project = await new_project(db)
    await insert_events(engine, int(project["id"]), retention_events())
    await build_rollups(engine, project)
    # r4 (W2 only) turns out to have been seen on Thursday Jan 8 (W1).
    await insert_events(engine, int(project["id"]), [Event("r4", "late", berlin("2026-01-08T09:00:00"))])
    expected = [
        ("2026-01-05", 3, [(0, 3, 100.0), (1, 2, 66.67), (2, 0, 0.0), (3, 1, 33.33)]),
        ("2026-01-12", 1, [(0, 1, 100.0), (1, 1, 100.0), (2, 0, 0.0)]),
    ]
    stale = await retention(client, project)
    assert (stale["meta"], cohort_rows(stale)) == ({"source": "events"}, expected)
    await build_rollups(engine, project)
    rebuilt = await retention(client, project)
    assert (rebuilt["meta"], cohort_rows(rebuilt)) == ({"source": "rollups"}, expected)


async def current_weeks(engine: AsyncEngine, project_id: int) -> dict[str, bool]:
    """Per week with events in January 2026: whether its retention rows may be read as current."""
    async with engine.connect() as connection:
        states = await rollup_repository.retention_week_states(
            connection, project_id, date(2026, 1, 5), date(2026, 1, 26), 3600
        )
    return {str(s.week): s.stamp is not None and s.stamp == s.days_built_at and s.days_current for s in states}


async def test_merges_keep_the_retention_weeks_without_rebuilding_them(
    client: AsyncTestClient[Any], db: DatabaseHarness, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its weeks are built, a merge takes out the rows of the visitors whose days it changes
    and puts them back (migration 1200): a new visitor, a returning one, a late session that moves
    a visitor's first day back a week, a session whose visitor changes. The weeks stay current
    with no week rebuilt, and the rows are those a rebuild from scratch writes."""
    project = await new_project(db)
    project_id = int(project["id"])
    # W1 is Monday Jan 5, W2 Monday Jan 12 (Berlin). r9 has a session on each day the merges below
    # write to, so that no merge lands on a day never built (that day is rebuilt, not merged).
    await insert_events(
        engine,
        project_id,
        [
            Event("r1", "a", berlin("2026-01-12T10:00:00")),
            Event("r2", "b", berlin("2026-01-05T10:00:00")),
            Event("r9", "z1", berlin("2026-01-08T09:00:00")),
            Event("r9", "z2", berlin("2026-01-13T09:00:00")),
            Event("r9", "z3", berlin("2026-01-14T09:00:00")),
        ],
    )
    await build_rollups(engine, project)
    assert await retention_rows(engine, project_id) == [
        ("2026-01-05", "2026-01-05", 1),  # r2
        ("2026-01-08", "2026-01-08", 1),  # r9 in W1
        ("2026-01-12", "2026-01-12", 1),  # r1
        ("2026-01-13", "2026-01-08", 1),  # r9 in W2
    ]

    async def no_rebuild(*args: object, **kwargs: object) -> bool:
        raise AssertionError("a retention week was rebuilt after a merge")

    monkeypatch.setattr(rollup_repository, "rebuild_retention_week", no_rebuild)
    await insert_events(
        engine,
        project_id,
        [
            Event("r3", "c", berlin("2026-01-13T10:00:00")),  # new
            Event("r2", "d", berlin("2026-01-14T10:00:00")),  # back in W2
            Event("r1", "e", berlin("2026-01-08T10:00:00")),  # seen a week before: first day Jan 8
        ],
    )
    await build_rollups(engine, project)
    assert await current_weeks(engine, project_id) == {"2026-01-05": True, "2026-01-12": True}
    assert await retention_rows(engine, project_id) == [
        ("2026-01-05", "2026-01-05", 1),  # r2 in W1
        ("2026-01-08", "2026-01-08", 2),  # r1 and r9 in W1
        ("2026-01-12", "2026-01-08", 1),  # r1 in W2
        ("2026-01-13", "2026-01-08", 1),  # r9 in W2
        ("2026-01-13", "2026-01-13", 1),  # r3
        ("2026-01-14", "2026-01-05", 1),  # r2 in W2
    ]
    # r3's session turns out to be r2's (a session's visitor is the least of its events'):
    # r3 is gone, and r2's first session of W2 is now on the 13th.
    await insert_events(engine, project_id, [Event("r2", "c", berlin("2026-01-13T10:05:00"))])
    await build_rollups(engine, project)
    assert await current_weeks(engine, project_id) == {"2026-01-05": True, "2026-01-12": True}
    kept = await retention_rows(engine, project_id)
    assert kept == [
        ("2026-01-05", "2026-01-05", 1),
        ("2026-01-08", "2026-01-08", 2),
        ("2026-01-12", "2026-01-08", 1),
        ("2026-01-13", "2026-01-05", 1),  # r2 in W2
        ("2026-01-13", "2026-01-08", 1),
    ]
    body = await retention(client, project, date_to="2026-01-18")
    assert (body["meta"], cohort_rows(body)) == (
        {"source": "rollups"},
        [("2026-01-05", 3, [(0, 3, 100.0), (1, 3, 100.0)])],
    )
    monkeypatch.undo()
    async with engine.begin() as connection:
        days = await rollup_purge_repository.rollup_days_through(connection, project_id, date(2026, 12, 31))
        await rollup_purge_repository.lock_days(connection, project_id, days)
        await rollup_purge_repository.forget_every_day(connection, project_id)
    await build_rollups(engine, project)
    assert await retention_rows(engine, project_id) == kept


async def merge_while_week_is_held(engine: AsyncEngine, project_id: int, week: date) -> None:
    """One refresh merging the one waiting event while another connection holds the week's lock."""
    key = rollup_purge_repository.week_lock_key(project_id, week)
    async with engine.connect() as holder, holder.begin():
        await holder.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, hashtext(:key))"),
            {"namespace": rollup_purge_repository.ROLLUP_LOCK_NAMESPACE, "key": key},
        )
        async with engine.begin() as connection:
            refresh = rollup_repository.ProjectToRefresh(project_id, "Europe/Berlin")
            outcome = await rollup_repository.refresh_project(connection, refresh, 0)
        assert outcome is not None
        assert outcome.merged_events == 1


async def test_a_merge_that_cannot_lock_a_week_leaves_it_to_be_rebuilt(
    client: AsyncTestClient[Any], db: DatabaseHarness, engine: AsyncEngine
) -> None:
    """A week held by another process (a rebuild, a purge) is neither written nor stamped by a
    merge: it goes stale, is read from the sessions meanwhile, and is rebuilt exactly."""
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(
        engine,
        project_id,
        [Event("r1", "a", berlin("2026-01-05T10:00:00")), Event("r9", "z", berlin("2026-01-13T09:00:00"))],
    )
    await build_rollups(engine, project)
    await insert_events(engine, project_id, [Event("r1", "b", berlin("2026-01-13T10:00:00"))])
    await merge_while_week_is_held(engine, project_id, date(2026, 1, 12))
    assert await current_weeks(engine, project_id) == {"2026-01-05": True, "2026-01-12": False}
    assert await retention_rows(engine, project_id) == [
        ("2026-01-05", "2026-01-05", 1),
        ("2026-01-13", "2026-01-13", 1),  # r9; r1's return not counted yet
    ]
    expected = [("2026-01-05", 1, [(0, 1, 100.0), (1, 1, 100.0)]), ("2026-01-12", 1, [(0, 1, 100.0)])]
    stale = await retention(client, project, date_to="2026-01-18")
    assert (stale["meta"], cohort_rows(stale)) == ({"source": "events"}, expected)
    await build_rollups(engine, project)
    assert await retention_rows(engine, project_id) == [
        ("2026-01-05", "2026-01-05", 1),
        ("2026-01-13", "2026-01-05", 1),
        ("2026-01-13", "2026-01-13", 1),
    ]
    rebuilt = await retention(client, project, date_to="2026-01-18")
    assert (rebuilt["meta"], cohort_rows(rebuilt)) == ({"source": "rollups"}, expected)
    # A merge that changes no visitor's days (r1's session goes on) moves no stamp of a week
    # held elsewhere either: that week's rebuild stamps it.
    await insert_events(engine, project_id, [Event("r1", "b", berlin("2026-01-13T10:05:00"))])
    await merge_while_week_is_held(engine, project_id, date(2026, 1, 12))
    assert await current_weeks(engine, project_id) == {"2026-01-05": True, "2026-01-12": False}
    await build_rollups(engine, project)
    assert await current_weeks(engine, project_id) == {"2026-01-05": True, "2026-01-12": True}


async def test_retention_rollup_over_an_empty_range(client: AsyncTestClient[Any], db: DatabaseHarness) -> None:
    project = await new_project(db)
    body = await retention(client, project)
    assert (body["meta"], body["cohorts"]) == ({"source": "rollups"}, [])


async def test_realtime_counts_the_last_five_minutes(
    client: AsyncTestClient[Any], db: DatabaseHarness, engine: AsyncEngine
) -> None:
    project, other = await new_project(db), await new_project(db)
    now = datetime.now(UTC)
    await insert_events(
        engine,
        int(project["id"]),
        [
            Event("a", "sa", now - timedelta(minutes=1)),
            Event("a", "sa", now - timedelta(minutes=2)),
            Event("b", "sb", now - timedelta(minutes=4), name="click"),
            Event("c", "sc", now - timedelta(minutes=10)),  # too old
            Event("bot", "sd", now - timedelta(minutes=1), is_bot=True),
        ],
    )
    await insert_events(engine, int(other["id"]), [Event("z", "sz", now - timedelta(minutes=1))])
    response = await client.get("/v1/realtime", headers=auth(project))
    assert response.status_code == 200
    assert response.json() == {"visitors": 2, "pageviews": 2, "window_seconds": 300}
    assert (await client.get("/v1/realtime", headers={"Authorization": "Bearer sk_wrong"})).status_code == 401


async def test_realtime_counts_visitors_without_pageviews_and_an_empty_window(
    client: AsyncTestClient[Any], db: DatabaseHarness, engine: AsyncEngine
) -> None:
    # Grouped by visitor (services/query/repository.py realtime): a visitor with only other
    # events is still a visitor, pageviews add up across visitors, and no event is 0 and 0.
    project, empty = await new_project(db), await new_project(db)
    now = datetime.now(UTC)
    await insert_events(
        engine,
        int(project["id"]),
        [
            Event("a", "sa", now - timedelta(minutes=1)),
            Event("a", "sa", now - timedelta(minutes=1), name="click"),
            Event("b", "sb", now - timedelta(minutes=2), name="signup"),
            Event("b", "sb", now - timedelta(minutes=3), name="click"),
            Event("c", "sc", now - timedelta(minutes=2)),
            Event("c", "sc2", now - timedelta(minutes=3)),
            Event("c", "sc2", now - timedelta(minutes=4)),
            Event("d", "sd", now - timedelta(minutes=6)),  # too old: neither a visitor nor a pageview
        ],
    )
    response = await client.get("/v1/realtime", headers=auth(project))
    assert response.json() == {"visitors": 3, "pageviews": 4, "window_seconds": 300}
    response = await client.get("/v1/realtime", headers=auth(empty))
    assert response.json() == {"visitors": 0, "pageviews": 0, "window_seconds": 300}


async def test_realtime_is_counted_once_per_project_for_the_cache_time(
    db: DatabaseHarness, engine: AsyncEngine
) -> None:
    project, other = await new_project(db), await new_project(db)
    now = datetime.now(UTC)
    await insert_events(engine, int(project["id"]), [Event("a", "sa", now - timedelta(minutes=1))])
    await insert_events(engine, int(other["id"]), [Event("z", "sz", now - timedelta(minutes=1))])
    app = create_app(db.database, query_settings=QuerySettings(rollup_interval_s=0, realtime_cache_s=2.0))
    async with AsyncTestClient(app) as client:
        assert (await client.get("/v1/realtime", headers=auth(project))).json()["visitors"] == 1
        await insert_events(engine, int(project["id"]), [Event("b", "sb", now - timedelta(minutes=1))])
        # Within the cache time: the same answer for this project; the other project has its own.
        assert (await client.get("/v1/realtime", headers=auth(project))).json()["visitors"] == 1
        assert (await client.get("/v1/realtime", headers=auth(other))).json()["visitors"] == 1
        await asyncio.sleep(2.1)
        assert (await client.get("/v1/realtime", headers=auth(project))).json()["visitors"] == 2


def spec(period: str) -> QuerySpec:
    return QuerySpec(metrics=["visitors"], period=period)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        ("today", (date(2026, 3, 1), date(2026, 3, 1))),
        ("7d", (date(2026, 2, 23), date(2026, 3, 1))),
        ("30d", (date(2026, 1, 31), date(2026, 3, 1))),
        ("month", (date(2026, 3, 1), date(2026, 3, 1))),
        ("12mo", (date(2025, 4, 1), date(2026, 3, 1))),
    ],
)
def test_presets_are_days_in_the_project_timezone(period: str, expected: tuple[date, date]) -> None:
    # 23:30 UTC on Feb 28 is already Mar 1 in Berlin
    now = datetime(2026, 2, 28, 23, 30, tzinfo=UTC)
    resolved = resolve_range(spec(period), "Europe/Berlin", now)
    assert (resolved.date_from, resolved.date_to) == expected
    assert resolved.end == datetime(2026, 3, 1, 23, 0, tzinfo=UTC)


async def test_today_preset_through_the_api(
    client: AsyncTestClient[Any], db: DatabaseHarness, engine: AsyncEngine
) -> None:
    project = await new_project(db, timezone="America/New_York")
    now = datetime.now(UTC)
    await insert_events(
        engine,
        int(project["id"]),
        [Event("a", "s1", now - timedelta(seconds=1)), Event("b", "s2", now - timedelta(days=2))],
    )
    response = await client.post("/v1/query", json={"metrics": ["visitors"], "period": "today"}, headers=auth(project))
    assert response.status_code == 200, response.text
    assert table(response.json()) == [[1]]


async def test_statement_timeout_answers_a_clear_error(
    db: DatabaseHarness, engine: AsyncEngine, dataset: Dataset
) -> None:
    project_id = int(dataset.project["id"])
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url,"
                " domain, path)"
                " SELECT :project_id, timestamptz '2026-01-13 10:00+00' + n * interval '1 second',"
                " gen_random_uuid(), 'pageview', 'v' || (n % 5000), 's' || (n % 9000), 'https://example.com/',"
                " 'example.com', '/p' || (n % 300) FROM generate_series(1, 60000) AS n"
            ),
            {"project_id": project_id},
        )
    async with AsyncTestClient(create_app(db.database_for("query", statement_timeout_ms=1))) as client:
        response = await client.post(
            "/v1/query",
            json={**RANGE, "metrics": ["visitors", "sessions", "bounce_rate"], "dimensions": ["page"]},
            headers=auth(dataset.project),
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "query_timeout"
    assert response.headers["retry-after"] == "2"


# What Postgres sends when a statement runs out of time: ErrorResponse, SQLSTATE 57014.
_TIMEOUT_FIELDS = b"SERROR\0VERROR\0C57014\0Mcanceling statement due to statement timeout\0\0"
STATEMENT_TIMEOUT_ERROR = b"E" + struct.pack("!i", len(_TIMEOUT_FIELDS) + 4) + _TIMEOUT_FIELDS


_VISITORS = ("/v1/query", {"metrics": ["visitors"]})
_EXACT_FUNNEL = (
    "/v1/funnel",
    {"steps": [{"type": "page", "value": "/"}, {"type": "page", "value": "/pricing"}], "sampling": "exact"},
)


@pytest.mark.parametrize(
    ("request_", "timeout_ms", "pause_s", "code", "field"),
    [
        (_VISITORS, 50, 0.2, "query_timeout", None),
        # a service's own timeout handling sees it too: an exact funnel's advice names sampling
        (_EXACT_FUNNEL, 50, 0.2, "query_timeout", "sampling"),
        (_VISITORS, 10_000, 0.0, "database_unavailable", None),
    ],
    ids=["after-the-timeout", "exact-funnel", "before-the-timeout"],
)
async def test_a_timeout_error_between_prepare_and_bind_is_answered_as_a_timeout(
    db: DatabaseHarness,
    dataset: Dataset,
    monkeypatch: pytest.MonkeyPatch,
    request_: tuple[str, dict[str, Any]],
    timeout_ms: int,
    pause_s: float,
    code: str,
    field: str | None,
) -> None:
    # Postgres times a statement from its Parse; asyncpg prepares (Parse, Describe, Flush) and
    # binds once the answer is in. When the timeout fires just after the Describe's answer, its
    # error reaches asyncpg while asyncpg expects nothing: asyncpg fails the bind with an
    # InternalClientError and closes the connection (asyncpg issue #1069). The 1 ms test above
    # hit this by chance on a loaded machine and answered "database_unavailable". The window is
    # too narrow to hit on purpose, so the server's error is handed to asyncpg's protocol right
    # there, once the statement has run past the timeout (or, in the second case, long before).
    original = AsyncAdapt_asyncpg_connection._prepare
    timed: set[int] = set()  # the connections whose transaction has just set its statement timeout

    async def prepare_then_time_out(self: AsyncAdapt_asyncpg_connection, operation: str, *args: Any) -> Any:
        prepared = await original(self, operation, *args)
        if "'statement_timeout'" in operation:
            timed.add(id(self))
        elif id(self) in timed:  # the first statement under the timeout
            timed.discard(id(self))
            await asyncio.sleep(pause_s)
            self._connection._protocol.data_received(STATEMENT_TIMEOUT_ERROR)
        return prepared

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "_prepare", prepare_then_time_out)
    app = create_app(
        db.database_for("query", statement_timeout_ms=timeout_ms), query_settings=QuerySettings(rollup_interval_s=0)
    )
    try:
        async with AsyncTestClient(app) as client:
            path, body = request_
            response = await client.post(path, json={**RANGE, **body}, headers=auth(dataset.project))
        outage_s = DATABASE_OUTAGE.seconds()
    finally:
        DATABASE_OUTAGE.recovered()  # the second case's refusal must not widen later tests' Retry-After
    assert response.status_code == 503
    assert response.json()["error"]["code"] == code
    assert response.json()["error"].get("field") == field
    # a timeout is not an outage: the database answered, so other refusals' Retry-After stays
    assert (outage_s == 0.0) == (code == "query_timeout")


async def test_openapi_documents_the_endpoints(client: AsyncTestClient[Any]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert {"/v1/query", "/v1/realtime", "/v1/funnel", "/v1/retention"} <= set(schema["paths"])
    query_post = schema["paths"]["/v1/query"]["post"]
    assert {"200", "401", "422", "503"} <= set(query_post["responses"])


async def test_query_results_are_exact_across_projects(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    # the other project's two pageviews of Jan 13 never leak into this one's day
    body = await query(client, dataset.project, metrics=["pageviews"], dimensions=["time:day"])
    assert table(body) == [["2026-01-12", 3], ["2026-01-13", 4], ["2026-01-14", 2]]
