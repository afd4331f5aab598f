"""The rollups: change tracking, freshness, grain choice and the HyperLogLog error bound."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.query import rollup_repository
from services.query.app import create_app
from services.query.planner import cube_for
from services.query.repository import AggregateQuery, FilterClause
from services.query.settings import QuerySettings
from services.query.tasks import pause_after_round
from services.query.vocabulary import (
    DOMAINS_CUBE,
    ENTRY_PAGES_CUBE,
    EVENT_NAMES_CUBE,
    EVENT_PAGES_CUBE,
    EXIT_PAGES_CUBE,
    HLL_RELATIVE_STANDARD_ERROR,
    HOURS_CUBE,
    PAGES_CUBE,
    VISITS_CUBE,
)
from tests.harness import DatabaseHarness
from tests.query.conftest import (
    Event,
    auth,
    berlin,
    build_rollups,
    insert_events,
    main_events,
    new_project,
    query,
    table,
)


async def rollup_days(engine: AsyncEngine, project_id: int) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT day::text, changes, built_changes FROM query_rollup_days"
                " WHERE project_id = :project_id ORDER BY day"
            ),
            {"project_id": project_id},
        )
        return [tuple(row) for row in result]


async def pending_days(engine: AsyncEngine, project_id: int) -> list[list[str]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT CAST(days AS text[]) FROM query_rollup_pending WHERE project_id = :project_id"
                " ORDER BY occurred_at"
            ),
            {"project_id": project_id},
        )
        return [list(row[0]) for row in result]


async def test_inserts_are_noted_per_local_day(db: DatabaseHarness, engine: AsyncEngine) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    # 23:30 on Jan 12 in Berlin is 22:30Z, still Jan 12; 00:30 on Jan 13 in Berlin is 23:30Z on Jan 12.
    await insert_events(engine, project_id, [Event("a", "s", berlin("2026-01-12T23:30:00"))])
    await insert_events(
        engine,
        project_id,
        [Event("a", "s", berlin("2026-01-12T23:40:00")), Event("a", "s", berlin("2026-01-13T00:30:00"))],
    )
    # Each event is its own statement. Inserts only create a day's marker (0800: a marker bumped
    # by every batch was a row lock that serialised the project's batches); each statement's
    # pending row names its events' local days. (The 00:30 event extends session s, which
    # started on Jan 12: the pending row names only Jan 13, and the refresh that takes it finds
    # the session's start day from query_sessions.)
    assert await rollup_days(engine, project_id) == [("2026-01-12", 1, None), ("2026-01-13", 1, None)]
    assert await pending_days(engine, project_id) == [["2026-01-12"], ["2026-01-12"], ["2026-01-13"]]
    await build_rollups(engine, project)
    assert await rollup_days(engine, project_id) == [("2026-01-12", 1, 1), ("2026-01-13", 1, 1)]
    assert await pending_days(engine, project_id) == []
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM events WHERE project_id = :p"), {"p": project_id})
    # A delete is not merged: it bumps its days' markers and marks them never built, to be rebuilt
    # from their events.
    assert await rollup_days(engine, project_id) == [("2026-01-12", 2, None), ("2026-01-13", 2, None)]


async def test_a_late_event_is_seen_at_once_or_within_the_staleness_bound(
    db: DatabaseHarness, engine: AsyncEngine
) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(
        engine,
        project_id,
        [Event("a", "s1", berlin("2026-01-12T10:00:00")), Event("b", "s2", berlin("2026-01-13T10:00:00"))],
    )
    await build_rollups(engine, project)
    await insert_events(engine, project_id, [Event("c", "s3", berlin("2026-01-12T11:00:00"))])
    spec = {"metrics": ["visitors", "pageviews"], "dimensions": ["time:day"], "date_to": "2026-01-13"}
    strict = QuerySettings(rollup_max_staleness_s=0, rollup_interval_s=0)
    lenient = QuerySettings(rollup_max_staleness_s=3600, rollup_interval_s=0)
    async with AsyncTestClient(create_app(db.database, query_settings=strict)) as client:
        # Jan 12 changed since its build, so it is computed from events; Jan 13 comes from the rollup.
        body = await query(client, project, **spec)
        assert (table(body), body["meta"]["source"]) == ([["2026-01-12", 2, 2], ["2026-01-13", 1, 1]], "rollups")
    async with AsyncTestClient(create_app(db.database, query_settings=lenient)) as client:
        # Within the staleness bound the day's last build is served: the late event is not in it yet.
        assert table(await query(client, project, **spec)) == [["2026-01-12", 1, 1], ["2026-01-13", 1, 1]]
        await build_rollups(engine, project)
        assert table(await query(client, project, **spec)) == [["2026-01-12", 2, 2], ["2026-01-13", 1, 1]]


async def test_visitor_estimates_stay_within_the_stated_bound(db: DatabaseHarness, engine: AsyncEngine) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    # 5,000 visitors with one pageview each on Jan 12, and 1,000 of them again on Jan 13.
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain,"
                " path, country)"
                " SELECT :project_id, CAST(:day AS timestamptz) + n * interval '1 second', gen_random_uuid(),"
                " 'pageview', 'visitor-' || n,"
                " 'session-' || n || '-' || CAST(:label AS text), 'https://example.com/', 'example.com', '/', 'DE'"
                " FROM generate_series(1, CAST(:visitors AS int)) AS n"
            ),
            [
                {"project_id": project_id, "day": berlin("2026-01-12T01:00:00"), "visitors": 5_000, "label": "a"},
                {"project_id": project_id, "day": berlin("2026-01-13T01:00:00"), "visitors": 1_000, "label": "b"},
            ],
        )
    await build_rollups(engine, project)
    settings = QuerySettings(rollup_max_staleness_s=0, rollup_interval_s=0)
    async with AsyncTestClient(create_app(db.database, query_settings=settings)) as client:
        body = await query(client, project, metrics=["visitors", "pageviews", "sessions"])
        exact = await client.post(
            "/v1/query",
            # domain with two visit dimensions is not in any rollup, so this reads events: exact
            json={"period": "custom", "date_from": "2026-01-12", "date_to": "2026-01-13", "metrics": ["visitors"]}
            | {"dimensions": ["domain", "country", "browser"], "limit": 1},
            headers=auth(project),
        )
    estimate, pageviews, sessions = table(body)[0]
    assert (pageviews, sessions) == (6_000, 6_000)  # exact, whatever the sketches say
    assert body["meta"]["exact"] is False
    bound = body["meta"]["visitors_relative_standard_error"]
    assert bound == pytest.approx(HLL_RELATIVE_STANDARD_ERROR, abs=1e-4)
    # The API states 99.7% of estimates fall within three standard errors.
    assert abs(estimate - 5_000) <= 3 * bound * 5_000, estimate
    assert exact.json()["meta"]["exact"] is True


def aggregate(dimensions: tuple[str, ...], filters: tuple[FilterClause, ...] = (), metrics=("visitors",)) -> Any:  # type: ignore[no-untyped-def]
    return AggregateQuery(
        project_id=1,
        timezone="UTC",
        start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 1, 2, tzinfo=UTC),
        metrics=metrics,
        dimensions=dimensions,
        filters=filters,
        order_by=(),
        limit=10,
        offset=0,
    )


def test_the_smallest_grain_that_holds_the_query_is_chosen() -> None:
    country_de = FilterClause("country", "is", ("DE",))
    assert cube_for(aggregate(())) == (VISITS_CUBE, frozenset())
    assert cube_for(aggregate(("time:day",), (country_de,))) == (VISITS_CUBE, frozenset({"country"}))
    assert cube_for(aggregate(("referrer",), (country_de,))) == (VISITS_CUBE, frozenset({"referrer", "country"}))
    three = (FilterClause("os", "is", ("iOS",)), country_de)
    assert cube_for(aggregate(("browser",), three)) == (VISITS_CUBE, VISITS_CUBE.grains[-1])
    assert cube_for(aggregate(("page",), (country_de,))) == (PAGES_CUBE, frozenset({"country"}))
    pricing = FilterClause("page", "is", ("/pricing",))
    assert cube_for(aggregate(("browser",), (pricing,), ("sessions",))) == (PAGES_CUBE, frozenset({"browser"}))
    # Entry and exit pages and hours have cubes of their own; a session has one of each, so
    # session metrics over several of them add up.
    assert cube_for(aggregate(("time:hour",), (country_de,))) == (HOURS_CUBE, frozenset({"country"}))
    entries = FilterClause("entry_page", "contains", ("pri",))
    assert cube_for(aggregate(("os",), (entries,), ("sessions",))) == (ENTRY_PAGES_CUBE, frozenset({"os"}))
    assert cube_for(aggregate(("exit_page",))) == (EXIT_PAGES_CUBE, frozenset())
    # Event names alone and with one visit dimension (migration 0770).
    assert cube_for(aggregate(("event_name",), (), ("sessions",))) == (EVENT_NAMES_CUBE, frozenset())
    signup = FilterClause("event_name", "is", ("signup",))
    assert cube_for(aggregate(("country",), (signup,))) == (EVENT_NAMES_CUBE, frozenset({"country"}))
    # Domains with one visit dimension (migration 0810).
    assert cube_for(aggregate(("domain", "country"))) == (DOMAINS_CUBE, frozenset({"country"}))
    # Not in any rollup: domain with a page or two visit dimensions, two fixed columns, page with
    # two visit dimensions, and session metrics over several pages (a session seeing two would
    # count twice).
    assert cube_for(aggregate(("time:hour", "page"))) is None
    assert cube_for(aggregate(("entry_page", "exit_page"))) is None
    assert cube_for(aggregate(("domain", "country"), (FilterClause("os", "is", ("iOS",)),))) is None
    assert cube_for(aggregate(("domain", "page"))) is None
    # Event names by page: their event rows (migration 0810), but no session metric from them.
    assert cube_for(aggregate(("event_name", "page"))) == (EVENT_PAGES_CUBE, frozenset())
    assert cube_for(aggregate(("event_name", "page"), (), ("visitors", "sessions"))) is None
    assert cube_for(aggregate(("page", "country"), (FilterClause("device", "is", ("mobile",)),))) is None
    some_pages = FilterClause("page", "contains", ("pri",))
    assert cube_for(aggregate((), (some_pages,), ("sessions",))) is None
    assert cube_for(aggregate((), (some_pages,), ("visitors", "pageviews"))) == (PAGES_CUBE, frozenset())


async def weekly_rows(engine: AsyncEngine, project_id: int) -> dict[str, int]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT week::text, count(*) FROM query_rollup_page_weeks WHERE project_id = :project_id GROUP BY week"
            ),
            {"project_id": project_id},
        )
        return {week: int(rows) for week, rows in result}


async def usable_weeks_of(engine: AsyncEngine, project_id: int) -> set[str]:
    async with engine.connect() as connection:
        weeks = await rollup_repository.usable_weeks(
            connection, project_id, date(2026, 1, 5), date(2026, 1, 25), max_staleness_s=0
        )
    return {week.isoformat() for week in weeks}


# Page queries over two complete weeks (Jan 5-11 and Jan 12-18, 2026) and two days after them.
WEEKS_RANGE = {"period": "custom", "date_from": "2026-01-05", "date_to": "2026-01-20"}
WEEKLY_SPECS: list[dict[str, Any]] = [
    {"metrics": ["visitors", "pageviews", "events"], "dimensions": ["page"]},
    {
        "metrics": ["visitors", "pageviews"],
        "dimensions": ["page"],
        "filters": [{"dimension": "country", "operator": "is", "values": ["DE"]}],
    },
    {"metrics": ["visitors", "pageviews"], "dimensions": ["page", "browser"]},
    {
        "metrics": ["visitors", "sessions", "bounce_rate", "visit_duration"],
        "dimensions": ["time:week"],
        "filters": [{"dimension": "page", "operator": "is", "values": ["/pricing"]}],
    },
]


async def test_complete_weeks_are_read_from_weekly_rows_with_the_same_figures(
    db: DatabaseHarness, engine: AsyncEngine
) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    extra = [
        Event("w1", "sw1", berlin("2026-01-06T09:00:00"), "/pricing"),
        Event("w1", "sw1", berlin("2026-01-06T09:03:00"), "/"),
        Event("w2", "sw2", berlin("2026-01-17T18:00:00"), "/pricing", country="FR", browser="Firefox"),
        Event("w1", "sw3", berlin("2026-01-19T08:00:00"), "/pricing"),
    ]
    await insert_events(engine, project_id, [*main_events(), *extra])
    await build_rollups(engine, project)
    # Every complete week with events gets rows; the range below ends inside the third.
    assert set(await weekly_rows(engine, project_id)) == {"2026-01-05", "2026-01-12", "2026-01-19"}
    assert await usable_weeks_of(engine, project_id) == {"2026-01-05", "2026-01-12", "2026-01-19"}

    strict = QuerySettings(rollup_max_staleness_s=0, rollup_interval_s=0)
    raw = QuerySettings(rollups=False)

    async def answers(settings: QuerySettings) -> list[tuple[Any, str]]:
        async with AsyncTestClient(create_app(db.database, query_settings=settings)) as client:
            bodies = [await query(client, project, **WEEKS_RANGE, **spec) for spec in WEEKLY_SPECS]
        return [(table(body), body["meta"]["source"]) for body in bodies]

    from_events = await answers(raw)
    assert all(source == "events" for _, source in from_events)
    # Sketches this small are exact (hll keeps the hashes themselves), so every figure must match.
    assert [rows for rows, _ in await answers(strict)] == [rows for rows, _ in from_events]
    assert all(source == "rollups" for _, source in await answers(strict))

    # A late event in the second week: that week is stale (its day is read from events) until rebuilt.
    await insert_events(engine, project_id, [Event("w3", "sw4", berlin("2026-01-15T12:00:00"), "/pricing")])
    assert await usable_weeks_of(engine, project_id) == {"2026-01-05", "2026-01-19"}
    with_late_event = await answers(raw)
    assert with_late_event != from_events
    assert [rows for rows, _ in await answers(strict)] == [rows for rows, _ in with_late_event]
    await build_rollups(engine, project)
    assert await usable_weeks_of(engine, project_id) == {"2026-01-05", "2026-01-12", "2026-01-19"}
    assert [rows for rows, _ in await answers(strict)] == [rows for rows, _ in with_late_event]


@pytest.mark.parametrize(
    ("busy_s", "share", "expected_s"),
    [
        (0.5, 0.1, 30.0),  # a cheap round: the interval
        (5.0, 0.1, 45.0),  # 5 s of rebuilding, then 45 s of rest: 10 % of the time
        (5.0, 0.5, 30.0),
        (60.0, 0.2, 240.0),
    ],
)
def test_the_refresher_spaces_rounds_out_so_rebuilding_stays_under_its_share(
    busy_s: float, share: float, expected_s: float
) -> None:
    settings = QuerySettings(rollup_interval_s=30.0, rollup_max_busy_share=share)
    assert pause_after_round(busy_s, settings) == pytest.approx(expected_s)


async def test_a_timezone_change_drops_the_rollups_and_rebuilds_them_in_the_new_zone(
    db: DatabaseHarness, engine: AsyncEngine
) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    # Berlin: both on Jan 13 (00:30 and 10:00). New York: Jan 12 18:30 and Jan 13 04:00.
    await insert_events(
        engine,
        project_id,
        [Event("a", "s1", berlin("2026-01-13T00:30:00")), Event("b", "s2", berlin("2026-01-13T10:00:00"))],
    )
    await build_rollups(engine, project)
    spec = {"metrics": ["pageviews", "sessions"], "dimensions": ["time:day"], "date_from": "2026-01-11"}
    settings = QuerySettings(rollup_max_staleness_s=3600, rollup_interval_s=0)
    async with AsyncTestClient(create_app(db.database, query_settings=settings)) as client:
        before = await query(client, project, **spec)
    assert (table(before), before["meta"]["source"]) == ([["2026-01-13", 2, 2]], "rollups")

    assert await admin.set_project_timezone(db.admin, project_id, "America/New_York")
    # Every old-zone row is gone; the days are marked afresh in the new zone, unbuilt.
    assert await rollup_days(engine, project_id) == [("2026-01-12", 1, None), ("2026-01-13", 1, None)]
    async with AsyncTestClient(create_app(db.database, query_settings=settings)) as client:
        raw = await query(client, project, **spec)
        assert (table(raw), raw["meta"]["source"]) == ([["2026-01-12", 1, 1], ["2026-01-13", 1, 1]], "events")
        await build_rollups(engine, project)
        rebuilt = await query(client, project, **spec)
    assert (table(rebuilt), rebuilt["meta"]["source"]) == (table(raw), "rollups")
    # Retention too: a first seen Monday Jan 12 18:30 and b Tuesday 04:00 in New York, one cohort.
    async with AsyncTestClient(create_app(db.database, query_settings=settings)) as client:
        cohorts = await client.post(
            "/v1/retention",
            json={"period": "custom", "date_from": "2026-01-11", "date_to": "2026-01-14"},
            headers=auth(project),
        )
    assert (cohorts.json()["meta"], cohorts.json()["cohorts"]) == (
        {"source": "rollups"},
        [{"week": "2026-01-12", "visitors": 2, "retention": [{"week_offset": 0, "visitors": 2, "percentage": 100.0}]}],
    )
    async with engine.connect() as connection:
        first_days = await connection.execute(
            text("SELECT active_day, first_day, visitors FROM query_rollup_retention WHERE project_id = :p ORDER BY 1"),
            {"p": project_id},
        )
        assert [tuple(str(value) for value in row) for row in first_days] == [
            ("2026-01-12", "2026-01-12", "1"),
            ("2026-01-13", "2026-01-13", "1"),
        ]
    with pytest.raises(admin.ProjectInputError):
        await admin.set_project_timezone(db.admin, project_id, "Mars/Olympus_Mons")
