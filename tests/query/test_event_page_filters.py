"""Event names under a page or entry-page chip, pages under an event or entry-page chip (issue #19, migration 0810).

The Goals card asks visitors by event name among its event goals and by page among its page
goals, under the dashboard's filter chips; the Custom events card asks event names but
pageviews. Under a page chip the event-name query, and under an event chip the page query,
name an event's name and its page together: the raw path counts the events that match both
(an event named `signup` on `/pricing`), and the event-pages rollup holds exactly those rows.
Under an entry-page chip both count the events of the sessions that entered there: the rows
per (entry page, event name, page) answer them.

Figures on the main data set (tests/query/conftest.py), Jan 12-14 in Berlin: v1's s1 viewed
/ and /pricing and sent `signup` on /pricing; v3's s4 viewed /pricing, sent `signup` on
/pricing, then viewed /checkout; v1 (s2, /blog), v2 (s3, / and /docs), v4 (s5, /) and v5
(s6, /late) sent pageviews only. Entry pages: / (s1, s3, s5), /blog (s2), /pricing (s4),
/late (s6). Goals: pages /pricing, /checkout, /old; events signup, purchase.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import rollup_purge_repository
from services.query.planner import cube_for
from services.query.repository import FilterClause
from services.query.vocabulary import (
    ENTRY_EVENT_PAGES_CUBE,
    ENTRY_PAGES_CUBE,
    EVENT_NAMES_CUBE,
    EVENT_PAGES_CUBE,
    PAGES_CUBE,
    SESSION_METRICS,
)
from services.replay.erasure import erase_person
from tests.harness import DatabaseHarness
from tests.query.conftest import Dataset, build_rollups, insert_events, main_events, new_project, query, table
from tests.query.test_event_name_filters import SESSION_DAYS, PlanSpy, chip
from tests.query.test_goals import _main_goals, conversions
from tests.query.test_rollup_increments import SCENARIOS, cube_rows, rebuilt_from_scratch
from tests.query.test_rollups import aggregate


def rate(part: int, whole: int) -> float:
    """A goal's conversion rate as the API rounds it."""
    return round(100 * part / whole, 2) if whole else 0.0


# Each chip: (visitors under it, {goal: visitors}, where the event goals and the page goals are
# read from the rollups).
GOALS = [("page", "/pricing"), ("event", "signup"), ("page", "/checkout"), ("page", "/old"), ("event", "purchase")]
CHIPS: dict[str, tuple[list[dict[str, Any]], int, dict[tuple[str, str], int], str, str]] = {
    # /pricing's viewers v1 and v3 both signed up on it; no event there was on /checkout.
    "page /pricing": (
        chip("page", "/pricing"),
        2,
        {("page", "/pricing"): 2, ("event", "signup"): 2},
        "query_rollup_event_pages",
        "query_rollup_pages",
    ),
    # v3 viewed /checkout, but her signup was on /pricing: not an event on /checkout.
    "page /checkout": (
        chip("page", "/checkout"),
        1,
        {("page", "/checkout"): 1},
        "query_rollup_event_pages",
        "query_rollup_pages",
    ),
    # v1, v2 and v4 viewed /; nobody signed up there.
    "page /": (chip("page", "/"), 3, {}, "query_rollup_event_pages", "query_rollup_pages"),
    # The visitors who signed up (v1, v3): their signups were on /pricing, none on /checkout.
    "event signup": (
        chip("event_name", "signup"),
        2,
        {("page", "/pricing"): 2, ("event", "signup"): 2},
        "query_rollup_event_names",
        "query_rollup_event_pages",
    ),
    # Every visitor sent a pageview; /pricing's were v1's and v3's, /checkout's v3's.
    "event pageview": (
        chip("event_name", "pageview"),
        5,
        {("page", "/pricing"): 2, ("page", "/checkout"): 1},
        "query_rollup_event_names",
        "query_rollup_event_pages",
    ),
    # s1, s3 and s5 entered on /: v1 viewed /pricing and signed up in s1 (v2 and v4 did neither).
    "entry_page /": (
        chip("entry_page", "/"),
        3,
        {("page", "/pricing"): 1, ("event", "signup"): 1},
        "query_rollup_entry_event_pages",
        "query_rollup_entry_event_pages",
    ),
    # s4 entered on /pricing: v3 viewed /pricing and /checkout and signed up.
    "entry_page /pricing": (
        chip("entry_page", "/pricing"),
        1,
        {("page", "/pricing"): 1, ("page", "/checkout"): 1, ("event", "signup"): 1},
        "query_rollup_entry_event_pages",
        "query_rollup_entry_event_pages",
    ),
    # s2 entered (and stayed) on /blog.
    "entry_page /blog": (
        chip("entry_page", "/blog"),
        1,
        {},
        "query_rollup_entry_event_pages",
        "query_rollup_entry_event_pages",
    ),
}


@pytest.mark.parametrize("name", list(CHIPS))
async def test_goal_conversions_under_a_page_or_event_filter(
    client: AsyncTestClient[Any], dataset: Dataset, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    filters, visitors, reached, event_source, page_source = CHIPS[name]
    await _main_goals(client, dataset.project)
    spy = PlanSpy(monkeypatch)
    body = await conversions(client, dataset.project, filters=filters)
    assert body["visitors"] == visitors
    by_goal = {(goal["type"], goal["value"]): (goal["visitors"], goal["conversion_rate"]) for goal in body["goals"]}
    expected = {goal: (reached.get(goal, 0), rate(reached.get(goal, 0), visitors)) for goal in GOALS}
    assert by_goal == expected
    sources = dict((dimensions, source) for dimensions, source in spy.sources if dimensions)
    if dataset.source == "rollups":
        assert sources == {("event_name",): event_source, ("page",): page_source}
        assert all(source != "events" for _, source in spy.sources), spy.sources
        assert body["meta"]["exact"] is False
    else:
        assert set(sources.values()) == {"events"}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (chip("page", "/pricing"), [["signup", 2, 2]]),
        (chip("page", "/checkout"), []),
        ([{"dimension": "page", "operator": "contains", "values": ["pric"]}], [["signup", 2, 2]]),
        (chip("entry_page", "/"), [["signup", 1, 1]]),
        (chip("entry_page", "/pricing"), [["signup", 1, 1]]),
        (chip("entry_page", "/blog"), []),
    ],
)
async def test_the_custom_events_card_under_a_page_or_entry_page_filter(
    client: AsyncTestClient[Any], dataset: Dataset, filters: list[dict[str, Any]], expected: list[list[Any]]
) -> None:
    not_pageviews = [{"dimension": "event_name", "operator": "is_not", "values": ["pageview"]}]
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "events"],
        dimensions=["event_name"],
        filters=[*filters, *not_pageviews],
        limit=10,
    )
    assert table(body) == expected
    assert body["meta"]["source"] == dataset.source


async def test_event_names_by_page(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    """Every (event name, page) of the range with its visitors, pageviews and events."""
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "pageviews", "events"],
        dimensions=["event_name", "page"],
        order_by=[{"field": "events", "direction": "desc"}],
        limit=20,
    )
    assert table(body) == [
        ["pageview", "/", 3, 3, 3],
        ["pageview", "/pricing", 2, 2, 2],
        ["signup", "/pricing", 2, 0, 2],
        ["pageview", "/blog", 1, 1, 1],
        ["pageview", "/checkout", 1, 1, 1],
        ["pageview", "/docs", 1, 1, 1],
        ["pageview", "/late", 1, 1, 1],
    ]
    assert body["meta"]["source"] == dataset.source


async def test_pages_under_an_entry_page_filter(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    """The Top pages card under an entry chip: the events of s1, s3 and s5 (entered on /) by page."""
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "pageviews", "events"],
        dimensions=["page"],
        filters=chip("entry_page", "/"),
        limit=10,
    )
    assert table(body) == [["/", 3, 3, 3], ["/docs", 1, 1, 1], ["/pricing", 1, 1, 2]]
    assert body["meta"]["source"] == dataset.source


async def test_session_metrics_by_event_name_under_a_page_filter_read_the_events(
    client: AsyncTestClient[Any], dataset: Dataset
) -> None:
    """The event-page rows hold no session figures: s1 and s4 each had a signup on /pricing
    (5 min and 2 min long), from the events whatever the rollups hold."""
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "sessions", "visit_duration"],
        dimensions=["event_name"],
        filters=chip("page", "/pricing"),
    )
    assert table(body) == [["pageview", 2, 2, 210.0], ["signup", 2, 2, 210.0]]
    assert body["meta"]["source"] == "events"


def test_every_event_and_page_shape_is_planned_onto_the_event_page_rows() -> None:
    goals = FilterClause("event_name", "is", ("signup", "purchase"))
    page_goals = FilterClause("page", "is", ("/pricing", "/checkout"))
    not_pageviews = FilterClause("event_name", "is_not", ("pageview",))
    for page in (FilterClause("page", "is", ("/pricing",)), FilterClause("page", "contains", ("pri",))):
        assert cube_for(aggregate(("event_name",), (page, goals))) == (EVENT_PAGES_CUBE, frozenset())
        assert cube_for(aggregate(("event_name",), (page, not_pageviews), ("visitors", "events"))) == (
            EVENT_PAGES_CUBE,
            frozenset(),
        )
    signup = FilterClause("event_name", "is", ("signup",))
    assert cube_for(aggregate(("page",), (signup, page_goals))) == (EVENT_PAGES_CUBE, frozenset())
    # No session metric: the rows hold none.
    for metric in SESSION_METRICS:
        assert cube_for(aggregate(("page",), (signup,), ("visitors", metric))) is None
    # What the earlier cubes answer stays theirs.
    assert cube_for(aggregate(("event_name",), (goals,))) == (EVENT_NAMES_CUBE, frozenset())
    assert cube_for(aggregate(("page",), (page_goals,))) == (PAGES_CUBE, frozenset())
    # Under an entry page: its own rows, for event names, pages or both.
    entry = FilterClause("entry_page", "is", ("/",))
    assert cube_for(aggregate(("event_name",), (entry, goals))) == (ENTRY_EVENT_PAGES_CUBE, frozenset())
    assert cube_for(aggregate(("page",), (entry, page_goals))) == (ENTRY_EVENT_PAGES_CUBE, frozenset())
    assert cube_for(aggregate(("page",), (entry, signup))) == (ENTRY_EVENT_PAGES_CUBE, frozenset())
    assert cube_for(aggregate(("page",), (entry,), ("visitors", "sessions"))) is None
    # The entry pages alone (and their session figures) stay with their own cube.
    assert cube_for(aggregate(("entry_page",), (), ("visitors", "sessions"))) == (ENTRY_PAGES_CUBE, frozenset())
    assert cube_for(aggregate(("entry_page",))) == (ENTRY_PAGES_CUBE, frozenset())
    # A visit dimension with both is not held (the event-page rows have one grain).
    country = FilterClause("country", "is", ("DE",))
    assert cube_for(aggregate(("event_name",), (FilterClause("page", "is", ("/",)), country))) is None


ENTRY = "query_rollup_entry_event_pages"


async def event_page_rows(
    engine: AsyncEngine, project_id: int, table: str = "query_rollup_event_pages"
) -> list[tuple[Any, ...]]:
    """(day, fixed columns, visitors, sessions, pageviews, events) of the project's rows of a
    cube of event rows."""
    fixed = "entry_page, event_name, page" if table == ENTRY else "event_name, page"
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                f"SELECT day::text, {fixed}, hll_cardinality(visitors)::bigint, sessions, pageviews, events"
                f" FROM {table} WHERE project_id = :project_id ORDER BY day, {fixed}"
            ),
            {"project_id": project_id},
        )
        return [tuple(row) for row in result]


# Hand-computed: each day's events by name and page (a session's events count on their own day:
# s3's /docs at 00:10 on Jan 13; the bot's never).
MAIN_EVENT_PAGE_ROWS = [
    ("2026-01-11", "pageview", "/old", 1, 0, 1, 1),
    ("2026-01-12", "pageview", "/", 2, 0, 2, 2),
    ("2026-01-12", "pageview", "/pricing", 1, 0, 1, 1),
    ("2026-01-12", "signup", "/pricing", 1, 0, 0, 1),
    ("2026-01-13", "pageview", "/blog", 1, 0, 1, 1),
    ("2026-01-13", "pageview", "/checkout", 1, 0, 1, 1),
    ("2026-01-13", "pageview", "/docs", 1, 0, 1, 1),
    ("2026-01-13", "pageview", "/pricing", 1, 0, 1, 1),
    ("2026-01-13", "signup", "/pricing", 1, 0, 0, 1),
    ("2026-01-14", "pageview", "/", 1, 0, 1, 1),
    ("2026-01-14", "pageview", "/late", 1, 0, 1, 1),
    ("2026-01-15", "pageview", "/late2", 1, 0, 1, 1),
]
# And by the entry page of their session.
MAIN_ENTRY_EVENT_PAGE_ROWS = [
    ("2026-01-11", "/old", "pageview", "/old", 1, 0, 1, 1),
    ("2026-01-12", "/", "pageview", "/", 2, 0, 2, 2),
    ("2026-01-12", "/", "pageview", "/pricing", 1, 0, 1, 1),
    ("2026-01-12", "/", "signup", "/pricing", 1, 0, 0, 1),
    ("2026-01-13", "/", "pageview", "/docs", 1, 0, 1, 1),
    ("2026-01-13", "/blog", "pageview", "/blog", 1, 0, 1, 1),
    ("2026-01-13", "/pricing", "pageview", "/checkout", 1, 0, 1, 1),
    ("2026-01-13", "/pricing", "pageview", "/pricing", 1, 0, 1, 1),
    ("2026-01-13", "/pricing", "signup", "/pricing", 1, 0, 0, 1),
    ("2026-01-14", "/", "pageview", "/", 1, 0, 1, 1),
    ("2026-01-14", "/late", "pageview", "/late", 1, 0, 1, 1),
    ("2026-01-15", "/late2", "pageview", "/late2", 1, 0, 1, 1),
]


async def test_a_rebuild_holds_each_days_events_by_name_and_page(db: DatabaseHarness, engine: AsyncEngine) -> None:
    project = await new_project(db)
    await insert_events(engine, int(project["id"]), main_events())
    await build_rollups(engine, project)
    assert await event_page_rows(engine, int(project["id"])) == MAIN_EVENT_PAGE_ROWS
    assert await event_page_rows(engine, int(project["id"]), ENTRY) == MAIN_ENTRY_EVENT_PAGE_ROWS


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_merged_event_page_rows_equal_a_rebuild(db: DatabaseHarness, engine: AsyncEngine, scenario: str) -> None:
    """Events in batches with a refresh after each (merged from the new events alone): the same
    rows as one rebuild, and as the hand-computed ones where the scenario adds nothing."""
    project = await new_project(db)
    project_id = int(project["id"])
    for batch in SCENARIOS[scenario](main_events()):
        await insert_events(engine, project_id, batch)
        await build_rollups(engine, project)
    merged = await event_page_rows(engine, project_id)
    merged_entries = await event_page_rows(engine, project_id, ENTRY)
    if scenario in ("one event per refresh", "earlier events arriving last"):
        assert merged == MAIN_EVENT_PAGE_ROWS
        assert merged_entries == MAIN_ENTRY_EVENT_PAGE_ROWS
    everything = await cube_rows(engine, project_id)
    assert await rebuilt_from_scratch(engine, project) == everything
    assert await event_page_rows(engine, project_id) == merged
    assert await event_page_rows(engine, project_id, ENTRY) == merged_entries


async def test_erasure_and_retention_remove_the_event_page_rows(
    db: DatabaseHarness, engine: AsyncEngine, admin_engine: AsyncEngine
) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, main_events())
    await build_rollups(engine, project)

    # Erasing v3 takes every row of her day (Jan 13, her sketches among them); the rebuild
    # leaves the others' rows of that day and none of hers (/checkout, her signup).
    async with admin_engine.begin() as connection:
        deletion = await erase_person(connection, project_id, "v3")
    assert deletion.deleted_rows["query_rollup_event_pages"] == 5
    assert deletion.deleted_rows[ENTRY] == 5
    assert [row for row in await event_page_rows(engine, project_id) if row[0] == "2026-01-13"] == []
    assert [row for row in await event_page_rows(engine, project_id, ENTRY) if row[0] == "2026-01-13"] == []
    await build_rollups(engine, project)
    assert [row for row in await event_page_rows(engine, project_id) if row[0] == "2026-01-13"] == [
        ("2026-01-13", "pageview", "/blog", 1, 0, 1, 1),
        ("2026-01-13", "pageview", "/docs", 1, 0, 1, 1),
    ]
    assert [row for row in await event_page_rows(engine, project_id, ENTRY) if row[0] == "2026-01-13"] == [
        ("2026-01-13", "/", "pageview", "/docs", 1, 0, 1, 1),
        ("2026-01-13", "/blog", "pageview", "/blog", 1, 0, 1, 1),
    ]

    # Retention: every row before Jan 13 goes.
    async with admin_engine.begin() as connection:
        days = await rollup_purge_repository.rollup_days_through(connection, project_id, date(2026, 1, 13))
        await rollup_purge_repository.lock_days(connection, project_id, days)
        await rollup_purge_repository.purge_before(connection, project_id, date(2026, 1, 13))
    assert [row for row in await event_page_rows(engine, project_id) if row[0] < "2026-01-13"] == []
    assert [row for row in await event_page_rows(engine, project_id, ENTRY) if row[0] < "2026-01-13"] == []


# Two visit chips (migration 0810: the event-name rows of each pair of visit dimensions) and a
# domain under one visit chip (the domain rows of each visit dimension).
TWO_CHIPS: dict[str, tuple[list[dict[str, Any]], int, dict[tuple[str, str], int]]] = {
    # v3's s4 (google.com, mobile): /pricing, the signup, /checkout.
    "referrer google.com, device mobile": (
        [*chip("referrer", "google.com"), *chip("device", "mobile")],
        1,
        {("page", "/pricing"): 1, ("page", "/checkout"): 1, ("event", "signup"): 1},
    ),
    # v1's s1 (google.com, DE).
    "referrer google.com, country DE": (
        [*chip("referrer", "google.com"), *chip("country", "DE")],
        1,
        {("page", "/pricing"): 1, ("event", "signup"): 1},
    ),
    # v1's direct s2 (DE, /blog only).
    "referrer none, country DE": ([*chip("referrer", None), *chip("country", "DE")], 1, {}),
}


@pytest.mark.parametrize("name", list(TWO_CHIPS))
async def test_goal_conversions_under_two_visit_filters(
    client: AsyncTestClient[Any], dataset: Dataset, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The event goals from the event-name rows of the pair's grain; the page goals from the
    session days' pages (migration 0850: the page rows hold one visit dimension at most)."""
    filters, visitors, reached = TWO_CHIPS[name]
    await _main_goals(client, dataset.project)
    spy = PlanSpy(monkeypatch)
    body = await conversions(client, dataset.project, filters=filters)
    assert body["visitors"] == visitors
    by_goal = {(goal["type"], goal["value"]): goal["visitors"] for goal in body["goals"]}
    assert by_goal == {goal: reached.get(goal, 0) for goal in GOALS}
    sources = dict((dimensions, source) for dimensions, source in spy.sources if dimensions)
    if dataset.source == "rollups":
        assert sources == {("event_name",): "query_rollup_event_names", ("page",): SESSION_DAYS}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([*chip("referrer", "google.com"), *chip("os", "iOS")], [["signup", 1, 1]]),
        ([*chip("referrer", "google.com"), *chip("country", "DE")], [["signup", 1, 1]]),
        ([*chip("referrer", "google.com"), *chip("utm_source", None)], [["signup", 1, 1]]),
        ([*chip("country", "DE"), *chip("browser", "Firefox")], []),
    ],
)
async def test_the_custom_events_card_under_two_visit_filters(
    client: AsyncTestClient[Any], dataset: Dataset, filters: list[dict[str, Any]], expected: list[list[Any]]
) -> None:
    not_pageviews = [{"dimension": "event_name", "operator": "is_not", "values": ["pageview"]}]
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "events"],
        dimensions=["event_name"],
        filters=[*filters, *not_pageviews],
        limit=10,
    )
    assert table(body) == expected
    assert body["meta"]["source"] == dataset.source


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        # v4's s5 came from twitter, on shop.example.org.
        (chip("utm_source", "twitter"), [["shop.example.org", 1, 1, 1]]),
        # v1's s1 and s2 (DE; v4 has no country): /, /pricing and /blog.
        (chip("country", "DE"), [["example.com", 1, 2, 3]]),
        (chip("browser", "Firefox"), [["example.com", 2, 2, 3]]),
    ],
)
async def test_domains_under_a_visit_filter(
    client: AsyncTestClient[Any], dataset: Dataset, filters: list[dict[str, Any]], expected: list[list[Any]]
) -> None:
    body = await query(
        client, dataset.project, metrics=["visitors", "sessions", "pageviews"], dimensions=["domain"], filters=filters
    )
    assert table(body) == expected
    assert body["meta"]["source"] == dataset.source
