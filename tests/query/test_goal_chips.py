"""Goals and custom events under an exit-page chip and under two visit chips (issues #15, #19; migration 0850).

No cube holds pages or event names with the exit page, nor pages with two visit dimensions;
each session day (query_rollup_session_days) holds its session's exit page and visit, and since
0850 its pages and the names of its other events, so those queries read them: exact, whatever
the chips. Figures on the main data set (tests/query/conftest.py), Jan 12-14 in Berlin:

- s1 (v1, Jan 12; DE, Chrome, google.com): /, /pricing, `signup` on /pricing; exits on /pricing;
- s2 (v1, Jan 13; DE, direct): /blog;
- s3 (v2, Jan 12-13 across midnight; US, Firefox): /, then /docs; exits on /docs;
- s4 (v3, Jan 13; FR, Mobile Safari, mobile, google.com): /pricing, `signup`, /checkout; exits on /checkout;
- s5 (v4, Jan 14): /; s6 (v5, Jan 14; GB, Firefox): /late.

Goals: pages /pricing, /checkout, /old; events signup, purchase.

Since 0900 an exit-page chip alone (with the grouped dimension's own filters) reads the exit-page
items (query_rollup_exit_items: per day and exit page, each page and event name with a visitor
sketch and the events), made from the session days; with a visit chip too, the session days.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import rollup_purge_repository
from services.query import repository
from services.query.app import create_app
from services.query.repository import AggregateQuery, ExitItemsPlan, SessionDayPlan
from services.query.settings import QuerySettings
from services.query.vocabulary import DIMENSIONS, VISIT_DIMENSIONS
from services.replay.erasure import erase_person
from tests.harness import DatabaseHarness
from tests.query.conftest import (
    Dataset,
    Event,
    berlin,
    build_rollups,
    insert_events,
    main_events,
    new_project,
    query,
    table,
)
from tests.query.test_event_name_filters import SESSION_DAYS, PlanSpy, chip
from tests.query.test_goals import _main_goals, conversions
from tests.query.test_rollup_increments import SCENARIOS, rebuilt_from_scratch

GOALS = [("page", "/pricing"), ("event", "signup"), ("page", "/checkout"), ("page", "/old"), ("event", "purchase")]
EXIT_ITEMS = "query_rollup_exit_items"
NOT_PAGEVIEWS = {"dimension": "event_name", "operator": "is_not", "values": ["pageview"]}

# Each chip set: (visitors under it, {goal: visitors}).
CHIPS: dict[str, tuple[list[dict[str, Any]], int, dict[tuple[str, str], int]]] = {
    "exit_page /pricing": (chip("exit_page", "/pricing"), 1, {("page", "/pricing"): 1, ("event", "signup"): 1}),
    # s4's visitor viewed /pricing and /checkout and signed up.
    "exit_page /checkout": (
        chip("exit_page", "/checkout"),
        1,
        {("page", "/pricing"): 1, ("page", "/checkout"): 1, ("event", "signup"): 1},
    ),
    # s3 (across midnight) reached no goal.
    "exit_page /docs": (chip("exit_page", "/docs"), 1, {}),
    "exit_page /checkout, country FR": (
        [*chip("exit_page", "/checkout"), *chip("country", "FR")],
        1,
        {("page", "/pricing"): 1, ("page", "/checkout"): 1, ("event", "signup"): 1},
    ),
    "exit_page /pricing, country FR": ([*chip("exit_page", "/pricing"), *chip("country", "FR")], 0, {}),
    "exit_page /pricing, referrer google.com": (
        [*chip("exit_page", "/pricing"), *chip("referrer", "google.com")],
        1,
        {("page", "/pricing"): 1, ("event", "signup"): 1},
    ),
    "country FR, device mobile": (
        [*chip("country", "FR"), *chip("device", "mobile")],
        1,
        {("page", "/pricing"): 1, ("page", "/checkout"): 1, ("event", "signup"): 1},
    ),
    # v1's s1 and s2 (DE, Chrome): /pricing and the signup in s1.
    "country DE, browser Chrome": (
        [*chip("country", "DE"), *chip("browser", "Chrome")],
        1,
        {("page", "/pricing"): 1, ("event", "signup"): 1},
    ),
}


def rate(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


def by_goal(body: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(goal["type"], goal["value"]): goal["visitors"] for goal in body["goals"]}


@pytest.fixture
async def raw_client(db: DatabaseHarness) -> AsyncIterator[AsyncTestClient[Any]]:
    """A query service that never reads the rollups: the raw path's answer to compare with."""
    settings = QuerySettings(rollups=False, rollup_interval_s=0)
    async with AsyncTestClient(create_app(db.database, query_settings=settings)) as test_client:
        yield test_client


@pytest.mark.parametrize("name", list(CHIPS))
async def test_goal_conversions_under_exit_page_and_two_visit_chips(
    client: AsyncTestClient[Any], dataset: Dataset, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    filters, visitors, reached = CHIPS[name]
    await _main_goals(client, dataset.project)
    spy = PlanSpy(monkeypatch)
    body = await conversions(client, dataset.project, filters=filters)
    assert body["visitors"] == visitors
    assert {(goal["type"], goal["value"]): (goal["visitors"], goal["conversion_rate"]) for goal in body["goals"]} == {
        goal: (reached.get(goal, 0), rate(reached.get(goal, 0), visitors)) for goal in GOALS
    }
    sources = dict((dimensions, source) for dimensions, source in spy.sources if dimensions)
    if dataset.source == "rollups":
        # No goal query reads the events. Under an exit-page chip alone its page and event goals
        # come from the exit-page items; with a visit chip too from the session days; under two
        # visit chips the page goals from the session days (the event-name rows of the pair
        # answer the event goals).
        alone = name.startswith("exit_page") and "," not in name
        assert sources[("page",)] == (EXIT_ITEMS if alone else SESSION_DAYS)
        if "exit_page" in name:
            assert sources[("event_name",)] == (EXIT_ITEMS if alone else SESSION_DAYS)
        assert all(source != "events" for _, source in spy.sources), spy.sources
    else:
        assert set(sources.values()) == {"events"}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (chip("exit_page", "/checkout"), [["signup", 1, 1]]),
        (chip("exit_page", "/pricing"), [["signup", 1, 1]]),
        (chip("exit_page", "/blog"), []),
        ([*chip("exit_page", "/checkout"), *chip("country", "FR")], [["signup", 1, 1]]),
        ([*chip("exit_page", "/checkout"), *chip("country", "DE")], []),
        ([*chip("exit_page", None)], []),
    ],
)
async def test_the_custom_events_card_under_an_exit_page_chip(
    client: AsyncTestClient[Any],
    dataset: Dataset,
    monkeypatch: pytest.MonkeyPatch,
    filters: list[dict[str, Any]],
    expected: list[list[Any]],
) -> None:
    spy = PlanSpy(monkeypatch)
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "events"],
        dimensions=["event_name"],
        filters=[*filters, NOT_PAGEVIEWS],
        limit=10,
    )
    assert table(body) == expected
    assert body["meta"]["source"] == dataset.source
    # Under the exit-page chip alone the exit-page items answer (visitors from sketches); with a
    # visit chip the session days (counted exactly).
    alone = all(item["dimension"] == "exit_page" for item in filters)
    rolled = EXIT_ITEMS if alone else SESSION_DAYS
    assert body["meta"]["exact"] is (dataset.source == "events" or not alone)
    assert [source for _, source in spy.sources] == [rolled if dataset.source == "rollups" else "events"]


async def test_event_names_with_pageviews_and_pages_under_an_exit_page_chip(
    client: AsyncTestClient[Any], dataset: Dataset
) -> None:
    # s4: two pageviews and a signup; its pages /pricing (twice) and /checkout.
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "events", "pageviews"],
        dimensions=["event_name"],
        filters=chip("exit_page", "/checkout"),
    )
    assert table(body) == [["pageview", 1, 2, 2], ["signup", 1, 1, 0]]
    body = await query(
        client, dataset.project, metrics=["visitors"], dimensions=["page"], filters=chip("exit_page", "/checkout")
    )
    assert table(body) == [["/checkout", 1], ["/pricing", 1]]
    # s3 crossed midnight: its / on Jan 12 and /docs on Jan 13, one visitor each day, once in all.
    body = await query(
        client, dataset.project, metrics=["visitors"], dimensions=["page"], filters=chip("exit_page", "/docs")
    )
    assert table(body) == [["/", 1], ["/docs", 1]]
    assert body["meta"]["source"] == dataset.source


async def test_a_late_event_moves_a_session_to_another_exit_page(
    db: DatabaseHarness,
    engine: AsyncEngine,
    client: AsyncTestClient[Any],
    raw_client: AsyncTestClient[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Merged, not rebuilt: s1 goes on to /checkout (its exit page moves from /pricing), then s4
    sends a second signup; the session days' answers follow and equal the raw events'."""
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, main_events())
    await build_rollups(engine, project)
    await _main_goals(client, project)
    await insert_events(engine, project_id, [Event("v1", "s1", berlin("2026-01-12T10:20:00"), "/checkout")])
    await build_rollups(engine, project)

    spy = PlanSpy(monkeypatch)
    moved = await conversions(client, project, filters=chip("exit_page", "/checkout"))
    assert moved["visitors"] == 2
    assert by_goal(moved) == {
        ("page", "/pricing"): 2,
        ("event", "signup"): 2,
        ("page", "/checkout"): 2,
        ("page", "/old"): 0,
        ("event", "purchase"): 0,
    }
    left = await conversions(client, project, filters=chip("exit_page", "/pricing"))
    assert left["visitors"] == 0
    assert set(by_goal(left).values()) == {0}
    assert {source for dimensions, source in spy.sources if dimensions} == {EXIT_ITEMS}
    # The exit-page items moved with s1: nothing left under /pricing on Jan 12, and /checkout
    # holds s1's pages, signup and three pageviews.
    assert [row for row in await exit_items(engine, project_id) if row[0] == "2026-01-12"] == [
        ("2026-01-12", "/checkout", "e", "pageview", 1, 3),
        ("2026-01-12", "/checkout", "e", "signup", 1, 1),
        ("2026-01-12", "/checkout", "p", "/", 1, 0),
        ("2026-01-12", "/checkout", "p", "/checkout", 1, 0),
        ("2026-01-12", "/checkout", "p", "/pricing", 1, 0),
        ("2026-01-12", "/docs", "e", "pageview", 1, 1),
        ("2026-01-12", "/docs", "p", "/", 1, 0),
    ]
    for filters in (chip("exit_page", "/checkout"), chip("exit_page", "/pricing")):
        raw = await conversions(raw_client, project, filters=filters)
        assert raw["meta"]["source"] == "events"
        rolled = await conversions(client, project, filters=filters)
        assert (raw["visitors"], by_goal(raw)) == (rolled["visitors"], by_goal(rolled))

    await insert_events(
        engine, project_id, [Event("v3", "s4", berlin("2026-01-13T12:03:00"), "/checkout", name="signup", country="FR")]
    )
    await build_rollups(engine, project)
    spec: dict[str, Any] = {
        "metrics": ["visitors", "events"],
        "dimensions": ["event_name"],
        "filters": [*chip("exit_page", "/checkout"), NOT_PAGEVIEWS],
    }
    rolled_body = await query(client, project, **spec)
    assert table(rolled_body) == [["signup", 2, 3]]
    assert rolled_body["meta"]["source"] == "rollups"
    assert table(await query(raw_client, project, **spec)) == [["signup", 2, 3]]
    merged = await exit_items(engine, project_id)
    stale = await stale_item_days(engine, project_id)
    await rebuilt_from_scratch(engine, project)
    assert await stale_item_days(engine, project_id) == []
    assert [row for row in await exit_items(engine, project_id) if row[0] not in stale] == merged


async def session_day_items(engine: AsyncEngine, project_id: int) -> list[tuple[Any, ...]]:
    """Each session day with its exit page, visit, pages (sorted here: a merge leaves a new
    session day's in no particular order), event names and their counts as stored (since 1210
    each page and name once, the names in byte order)."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT day::text, session_id, distinct_id, pageviews, events, exit_page, country, device,"
                ' ARRAY(SELECT x FROM unnest(pages) AS x ORDER BY x COLLATE "C"), event_names, event_counts'
                " FROM query_rollup_session_days WHERE project_id = :project_id ORDER BY 1, 2, 3"
            ),
            {"project_id": project_id},
        )
        return [tuple(row) for row in result]


async def exit_items(engine: AsyncEngine, project_id: int) -> list[tuple[Any, ...]]:
    """The exit-page items of the days whose items are current (not stale): (day, exit page,
    kind, value, visitors, events)."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT i.day::text, i.exit_page, i.kind, i.value, round(hll_cardinality(i.visitors))::int, i.events"
                f" FROM {EXIT_ITEMS} i JOIN query_rollup_days d ON d.project_id = i.project_id AND d.day = i.day"
                " WHERE i.project_id = :project_id AND NOT d.exit_items_stale"
                ' ORDER BY i.day, i.exit_page COLLATE "C", i.kind, i.value COLLATE "C"'
            ),
            {"project_id": project_id},
        )
        return [tuple(row) for row in result]


async def stale_item_days(engine: AsyncEngine, project_id: int) -> list[str]:
    """The days whose exit-page items a merge into the latest day left stale."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT day::text FROM query_rollup_days WHERE project_id = :p AND exit_items_stale ORDER BY 1"),
            {"p": project_id},
        )
        return list(result.scalars())


# The main data set's items, from MAIN_SESSION_DAYS below.
MAIN_EXIT_ITEMS = [
    ("2026-01-12", "/docs", "e", "pageview", 1, 1),
    ("2026-01-12", "/docs", "p", "/", 1, 0),
    ("2026-01-12", "/pricing", "e", "pageview", 1, 2),
    ("2026-01-12", "/pricing", "e", "signup", 1, 1),
    ("2026-01-12", "/pricing", "p", "/", 1, 0),
    ("2026-01-12", "/pricing", "p", "/pricing", 1, 0),
    ("2026-01-13", "/blog", "e", "pageview", 1, 1),
    ("2026-01-13", "/blog", "p", "/blog", 1, 0),
    ("2026-01-13", "/checkout", "e", "pageview", 1, 2),
    ("2026-01-13", "/checkout", "e", "signup", 1, 1),
    ("2026-01-13", "/checkout", "p", "/checkout", 1, 0),
    ("2026-01-13", "/checkout", "p", "/pricing", 1, 0),
    ("2026-01-13", "/docs", "e", "pageview", 1, 1),
    ("2026-01-13", "/docs", "p", "/docs", 1, 0),
    ("2026-01-14", "/", "e", "pageview", 1, 1),
    ("2026-01-14", "/", "p", "/", 1, 0),
    ("2026-01-14", "/late", "e", "pageview", 1, 1),
    ("2026-01-14", "/late", "p", "/late", 1, 0),
]


MAIN_SESSION_DAYS = [
    ("2026-01-12", "s1", "v1", 2, 3, "/pricing", "DE", "desktop", ["/", "/pricing"], ["signup"], [1]),
    ("2026-01-12", "s3", "v2", 1, 1, "/docs", "US", "desktop", ["/"], [], []),
    ("2026-01-13", "s2", "v1", 1, 1, "/blog", "DE", "desktop", ["/blog"], [], []),
    ("2026-01-13", "s3", "v2", 1, 1, "/docs", "US", "desktop", ["/docs"], [], []),
    ("2026-01-13", "s4", "v3", 2, 3, "/checkout", "FR", "mobile", ["/checkout", "/pricing"], ["signup"], [1]),
    ("2026-01-14", "s5", "v4", 1, 1, "/", None, "desktop", ["/"], [], []),
    ("2026-01-14", "s6", "v5", 1, 1, "/late", "GB", "desktop", ["/late"], [], []),
]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_merged_session_day_items_equal_a_rebuild(
    db: DatabaseHarness, engine: AsyncEngine, scenario: str
) -> None:
    """Events in batches with a refresh after each: the same pages and event names per session
    day as one rebuild, and the hand-computed ones where the scenario adds nothing."""
    project = await new_project(db)
    project_id = int(project["id"])
    for batch in SCENARIOS[scenario](main_events()):
        await insert_events(engine, project_id, batch)
        await build_rollups(engine, project)
    merged = await session_day_items(engine, project_id)
    merged_items = await exit_items(engine, project_id)
    # Merges into the project's latest day leave its items stale (read from its session days).
    stale = await stale_item_days(engine, project_id)
    assert len(stale) <= 1
    in_range = [row for row in merged if "2026-01-12" <= row[0] <= "2026-01-14"]
    if scenario in ("one event per refresh", "earlier events arriving last"):
        assert in_range == MAIN_SESSION_DAYS
        assert [row for row in merged_items if "2026-01-12" <= row[0] <= "2026-01-14"] == MAIN_EXIT_ITEMS
    await rebuilt_from_scratch(engine, project)
    assert await session_day_items(engine, project_id) == merged
    # The exit-page items merged equal those of the rebuild (made from its session days).
    assert merged_items
    assert [row for row in await exit_items(engine, project_id) if row[0] not in stale] == merged_items


def long_session() -> list[Event]:
    """One session of a day with the same pages and event names over and over (as a long visit
    sends them), a new page and a new name late, and a second visitor's session beside it."""
    at = "2026-01-13T10:{:02d}:00"
    return [
        Event("v1", "s1", berlin(at.format(0)), "/"),
        Event("v1", "s1", berlin(at.format(1)), "/", name="scroll"),
        Event("v1", "s1", berlin(at.format(2)), "/pricing"),
        Event("v1", "s1", berlin(at.format(3)), "/pricing", name="scroll"),
        Event("v1", "s1", berlin(at.format(4)), "/pricing", name="signup"),
        Event("v1", "s1", berlin(at.format(5)), "/", name="scroll"),
        Event("v2", "s2", berlin(at.format(6)), "/docs"),
        Event("v1", "s1", berlin(at.format(7)), "/pricing", name="scroll"),
        Event("v1", "s1", berlin(at.format(8)), "/checkout"),
        Event("v1", "s1", berlin(at.format(9)), "/checkout", name="purchase"),
        Event("v1", "s1", berlin(at.format(10)), "/checkout", name="scroll"),
    ]


LONG_SESSION_DAYS = [
    (
        "2026-01-13",
        "s1",
        "v1",
        3,
        10,
        "/checkout",
        "DE",
        "desktop",
        ["/", "/checkout", "/pricing"],
        ["purchase", "scroll", "signup"],
        [1, 5, 1],
    ),
    ("2026-01-13", "s2", "v2", 1, 1, "/docs", "DE", "desktop", ["/docs"], [], []),
]


async def custom_events_exiting_on_checkout(client: AsyncTestClient[Any], project: dict[str, Any]) -> list[Any]:
    body = await query(
        client,
        project,
        metrics=["visitors", "events"],
        dimensions=["event_name"],
        filters=[*chip("exit_page", "/checkout"), NOT_PAGEVIEWS],
    )
    return sorted(table(body))


@pytest.mark.parametrize("per_refresh", [1, 2, 11])
async def test_a_session_day_holds_each_page_and_name_once_with_its_events(
    db: DatabaseHarness, engine: AsyncEngine, client: AsyncTestClient[Any], per_refresh: int
) -> None:
    """Merged one event, two events or all events at a time: each page and name once, each
    name's events counted (1210; before, a name per event, and pages repeated per batch), the
    same arrays as a rebuild. The custom events under an exit-page chip count them, read from
    the session days (merged into: the day's items stale) and from the items a rebuild made."""
    project = await new_project(db)
    project_id = int(project["id"])
    events = long_session()
    for start in range(0, len(events), per_refresh):
        await insert_events(engine, project_id, events[start : start + per_refresh])
        await build_rollups(engine, project)
    assert await session_day_items(engine, project_id) == LONG_SESSION_DAYS
    expected = [["purchase", 1, 1], ["scroll", 1, 5], ["signup", 1, 1]]
    assert await custom_events_exiting_on_checkout(client, project) == expected
    await rebuilt_from_scratch(engine, project)
    assert await session_day_items(engine, project_id) == LONG_SESSION_DAYS
    assert await stale_item_days(engine, project_id) == []
    assert await custom_events_exiting_on_checkout(client, project) == expected


async def test_erasure_and_retention_remove_the_session_day_items(
    db: DatabaseHarness, engine: AsyncEngine, admin_engine: AsyncEngine, client: AsyncTestClient[Any]
) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, main_events())
    await build_rollups(engine, project)
    await _main_goals(client, project)

    # Erasing v3 takes every session day of her day (Jan 13); the rebuild brings back the
    # others' and none of hers: nothing exits on /checkout any more.
    async with admin_engine.begin() as connection:
        deletion = await erase_person(connection, project_id, "v3")
    assert deletion.deleted_rows["query_rollup_session_days"] == 3
    assert deletion.deleted_rows[EXIT_ITEMS] == 8
    assert [row for row in await exit_items(engine, project_id) if row[0] == "2026-01-13"] == []
    await build_rollups(engine, project)
    rows = await session_day_items(engine, project_id)
    assert [row for row in rows if row[2] == "v3"] == []
    assert [row for row in rows if row[0] == "2026-01-13"] == [
        ("2026-01-13", "s2", "v1", 1, 1, "/blog", "DE", "desktop", ["/blog"], [], []),
        ("2026-01-13", "s3", "v2", 1, 1, "/docs", "US", "desktop", ["/docs"], [], []),
    ]
    body = await conversions(client, project, filters=chip("exit_page", "/checkout"))
    assert body["visitors"] == 0
    assert set(by_goal(body).values()) == {0}
    assert [row for row in await exit_items(engine, project_id) if row[0] == "2026-01-13"] == [
        row for row in MAIN_EXIT_ITEMS if row[0] == "2026-01-13" and row[1] != "/checkout"
    ]

    # Retention: every session day before Jan 13 goes.
    async with admin_engine.begin() as connection:
        days = await rollup_purge_repository.rollup_days_through(connection, project_id, date(2026, 1, 13))
        await rollup_purge_repository.lock_days(connection, project_id, days)
        await rollup_purge_repository.purge_before(connection, project_id, date(2026, 1, 13))
    assert [row for row in await session_day_items(engine, project_id) if row[0] < "2026-01-13"] == []
    assert [row for row in await exit_items(engine, project_id) if row[0] < "2026-01-13"] == []


async def test_days_not_rolled_up_are_computed_from_their_events(
    db: DatabaseHarness, engine: AsyncEngine, client: AsyncTestClient[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """s1 goes on to /checkout and no refresh follows: Jan 12 is computed from its events (s1 now
    exits on /checkout), Jan 13 and 14 read from the session days, in one statement."""
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, main_events())
    await build_rollups(engine, project)
    await _main_goals(client, project)
    await insert_events(engine, project_id, [Event("v1", "s1", berlin("2026-01-12T10:20:00"), "/checkout")])
    plans: list[SessionDayPlan | ExitItemsPlan] = []
    original = repository.aggregate

    async def spied(connection: Any, query: AggregateQuery, plan: Any) -> Any:
        if isinstance(plan, SessionDayPlan | ExitItemsPlan):
            plans.append(plan)
        return await original(connection, query, plan)

    monkeypatch.setattr(repository, "aggregate", spied)
    body = await conversions(client, project, filters=chip("exit_page", "/checkout"))
    # v1 (s1, Jan 12, computed) and v3 (s4, Jan 13, rolled up): both viewed /pricing and signed
    # up; v1's /checkout is on Jan 12, v3's on Jan 13.
    assert by_goal(body) == {
        ("page", "/pricing"): 2,
        ("event", "signup"): 2,
        ("page", "/checkout"): 2,
        ("page", "/old"): 0,
        ("event", "purchase"): 0,
    }
    assert plans
    # The exit-page items for the rolled days, the events for Jan 12.
    assert all(isinstance(plan, ExitItemsPlan) for plan in plans)
    assert all(plan.computed_days == (date(2026, 1, 12),) for plan in plans)
    assert all(date(2026, 1, 13) in plan.rolled_days for plan in plans)


async def test_page_goals_under_two_visit_chips_count_each_visitor_once_per_page(
    db: DatabaseHarness,
    engine: AsyncEngine,
    client: AsyncTestClient[Any],
    raw_client: AsyncTestClient[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Migration 0920's path (each listed page tested for containment, visitors counted once per
    page): v1 views /pricing on Jan 12 (s1) and, merged in two later batches, twice on Jan 13
    (s2: its pages /blog, /pricing, each once since 1210); both sessions DE and desktop."""
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, main_events())
    await build_rollups(engine, project)
    for minute in ("01", "02"):
        await insert_events(engine, project_id, [Event("v1", "s2", berlin(f"2026-01-13T09:{minute}:00"), "/pricing")])
        await build_rollups(engine, project)
    async with engine.connect() as connection:
        pages = await connection.execute(
            text("SELECT pages FROM query_rollup_session_days WHERE project_id = :project_id AND session_id = 's2'"),
            {"project_id": project_id},
        )
        assert [row[0] for row in pages] == [["/blog", "/pricing"]]
    two_chips = [*chip("country", "DE"), *chip("device", "desktop")]
    cases = [
        # v1 once per page, whatever the days and repeats; /docs is US (v2) only.
        (
            [*two_chips, {"dimension": "page", "operator": "is", "values": ["/pricing", "/blog", "/docs", "/"]}],
            [["/", 1], ["/blog", 1], ["/pricing", 1]],
        ),
        # A second filter on the page narrows the listed pages.
        (
            [
                *two_chips,
                {"dimension": "page", "operator": "is", "values": ["/pricing", "/blog"]},
                {"dimension": "page", "operator": "is_not", "values": ["/blog"]},
            ],
            [["/pricing", 1]],
        ),
        # FR and mobile: v3 (s4) viewed /pricing and /checkout.
        (
            [*chip("country", "FR"), *chip("device", "mobile"), *chip("page", "/pricing")],
            [["/pricing", 1]],
        ),
        ([*chip("country", "US"), *chip("device", "mobile"), *chip("page", "/pricing")], []),
    ]
    for filters, expected in cases:
        spy = PlanSpy(monkeypatch)
        body = await query(client, project, metrics=["visitors"], dimensions=["page"], filters=filters)
        assert table(body) == expected, filters
        assert body["meta"]["exact"] is True
        assert [source for _, source in spy.sources] == [SESSION_DAYS]
        assert table(await query(raw_client, project, metrics=["visitors"], dimensions=["page"], filters=filters)) == (
            expected
        )
    # Visitors alone by event name (counted after a DISTINCT, as pages are): s1 (DE) exits on
    # /pricing with its pageviews and signup. (Under the exit-page chip alone the exit-page
    # items answer, 0900; with a visit chip too, the session days.)
    spy = PlanSpy(monkeypatch)
    body = await query(
        client,
        project,
        metrics=["visitors"],
        dimensions=["event_name"],
        filters=[*chip("exit_page", "/pricing"), *chip("country", "DE")],
    )
    assert table(body) == [["pageview", 1], ["signup", 1]]
    assert [source for _, source in spy.sources] == [SESSION_DAYS]


async def test_every_visit_column_of_the_session_days_is_indexed(engine: AsyncEngine) -> None:
    """Migration 0920: under two visit chips the planner reads the session days of the chips
    from these indexes, not every session day of the range; a visit dimension added later needs
    its own."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT indexdef FROM pg_indexes WHERE tablename = 'query_rollup_session_days'")
        )
        definitions = {row[0].split(" USING btree ")[1] for row in result if " USING btree " in row[0]}
    for name in VISIT_DIMENSIONS:
        assert f"(project_id, day, {DIMENSIONS[name].rolled})" in definitions, name


async def test_the_latest_day_is_read_from_its_session_days_until_a_later_day_has_events(
    db: DatabaseHarness,
    engine: AsyncEngine,
    client: AsyncTestClient[Any],
    raw_client: AsyncTestClient[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Merges into the latest day leave its exit-page items stale: that day is read from its
    session days, the others from the items, in one statement; once a later day has events, a
    refresh remakes the day's items."""
    project = await new_project(db)
    project_id = int(project["id"])
    await _main_goals(client, project)
    # Jan 12: v1 views / and /pricing, signs up, exits on /pricing. Jan 13: v2 on /.
    await insert_events(
        engine,
        project_id,
        [
            Event("v1", "s1", berlin("2026-01-12T10:00:00"), "/"),
            Event("v1", "s1", berlin("2026-01-12T10:05:00"), "/pricing"),
            Event("v1", "s1", berlin("2026-01-12T10:06:00"), "/pricing", name="signup"),
            Event("v2", "s2", berlin("2026-01-13T09:00:00"), "/"),
        ],
    )
    await build_rollups(engine, project)
    # Jan 12 rebuilt; Jan 13, the latest, merged from empty: its items are left stale already.
    assert await stale_item_days(engine, project_id) == ["2026-01-13"]
    # Merged into Jan 13 (the latest day): v2 goes on to /pricing; v3 lands there and signs up.
    await insert_events(
        engine,
        project_id,
        [
            Event("v2", "s2", berlin("2026-01-13T09:05:00"), "/pricing"),
            Event("v3", "s3", berlin("2026-01-13T11:00:00"), "/pricing"),
            Event("v3", "s3", berlin("2026-01-13T11:01:00"), "/pricing", name="signup"),
        ],
    )
    await build_rollups(engine, project)
    assert await stale_item_days(engine, project_id) == ["2026-01-13"]
    plans: list[ExitItemsPlan] = []
    original = repository.aggregate

    async def spied(connection: Any, query: AggregateQuery, plan: Any) -> Any:
        if isinstance(plan, ExitItemsPlan):
            plans.append(plan)
        return await original(connection, query, plan)

    monkeypatch.setattr(repository, "aggregate", spied)
    body = await conversions(client, project, filters=chip("exit_page", "/pricing"))
    assert body["visitors"] == 3
    assert by_goal(body) == {
        ("page", "/pricing"): 3,
        ("event", "signup"): 2,
        ("page", "/checkout"): 0,
        ("page", "/old"): 0,
        ("event", "purchase"): 0,
    }
    raw = await conversions(raw_client, project, filters=chip("exit_page", "/pricing"))
    assert (raw["visitors"], by_goal(raw)) == (body["visitors"], by_goal(body))
    assert plans
    assert all(
        (plan.rolled_days, plan.session_days, plan.computed_days) == ((date(2026, 1, 12),), (date(2026, 1, 13),), ())
        for plan in plans
    )
    spec: dict[str, Any] = {
        "metrics": ["visitors", "events"],
        "dimensions": ["event_name"],
        "filters": [*chip("exit_page", "/pricing"), NOT_PAGEVIEWS],
    }
    assert table(await query(client, project, **spec)) == [["signup", 2, 2]]
    # Nothing exits on / any more.
    assert table(await query(client, project, **{**spec, "filters": [*chip("exit_page", "/"), NOT_PAGEVIEWS]})) == []

    # A later day: Jan 13's items are remade from its session days (its exit page / gone).
    await insert_events(engine, project_id, [Event("v4", "s4", berlin("2026-01-14T08:00:00"), "/")])
    await build_rollups(engine, project)
    assert await stale_item_days(engine, project_id) == ["2026-01-14"]
    assert [row for row in await exit_items(engine, project_id) if row[0] == "2026-01-13"] == [
        ("2026-01-13", "/pricing", "e", "pageview", 2, 3),
        ("2026-01-13", "/pricing", "e", "signup", 1, 1),
        ("2026-01-13", "/pricing", "p", "/", 1, 0),
        ("2026-01-13", "/pricing", "p", "/pricing", 2, 0),
    ]
    plans.clear()
    assert by_goal(await conversions(client, project, filters=chip("exit_page", "/pricing"))) == by_goal(body)
    assert all(plan.rolled_days == (date(2026, 1, 12), date(2026, 1, 13)) for plan in plans)
