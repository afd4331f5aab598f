"""Event names under a visit filter: goal conversions and the Custom events card (issue #19, migration 0770).

The dashboard's Goals card sends POST /v1/goals/conversions with its filter chips, which asks
three aggregate queries: visitors; visitors by page among the page goals; visitors by event
name among the event goals. The Custom events card asks visitors and events by event name
with `event_name is_not pageview` and the chips. Under a visit chip (source, UTM tag, country,
browser, OS, device) the event-name queries are answered by the event-name rollup's grain of
that one visit dimension; before 0770 they read the raw events.

Figures on the main data set (tests/query/conftest.py), Jan 12-14 in Berlin: `signup` was sent
by v1 in s1 (google.com, newsletter/email/jan, DE, Chrome, Windows, desktop) and by v3 in s4
(google.com, FR, Mobile Safari, iOS, mobile); /pricing was seen in the same two sessions.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import rollup_purge_repository
from services.query import repository
from services.query.planner import cube_for
from services.query.repository import AggregateQuery, CubePlan, FilterClause, SessionDayPlan
from services.query.vocabulary import EVENT_NAMES_CUBE, VISIT_DIMENSIONS, grain_id
from services.replay.erasure import erase_person
from tests.harness import DatabaseHarness
from tests.query.conftest import (
    Dataset,
    build_rollups,
    insert_events,
    main_events,
    new_project,
    query,
    table,
)
from tests.query.test_goals import _main_goals, conversions
from tests.query.test_rollup_increments import cube_rows, earlier_events_arriving_last, rebuilt_from_scratch
from tests.query.test_rollups import aggregate


def chip(dimension: str, value: str | None) -> list[dict[str, Any]]:
    """One dashboard filter chip, as the dashboard sends it (`is`, one value; "" means none)."""
    return [{"dimension": dimension, "operator": "is", "values": [value]}]


# Each visit dimension's chip: (visitors under it, /pricing's visitors, signup's visitors).
# The visitors of each session's visit: s1 v1, s2 v1 (direct, /blog), s3 v2 (news.ycombinator.com,
# US, Firefox, Linux), s4 v3, s5 v4 (t.co, twitter/social, no country, Edge, Windows), s6 v5
# (direct, GB, Firefox, Mac OS X).
VISIT_CHIPS: dict[str, tuple[list[dict[str, Any]], int, int, int]] = {
    "referrer google.com": (chip("referrer", "google.com"), 2, 2, 2),
    # Direct visits: v1's second session (which sent nothing) and v5's.
    "referrer none": (chip("referrer", None), 2, 0, 0),
    "utm_source newsletter": (chip("utm_source", "newsletter"), 1, 1, 1),
    "utm_medium email": (chip("utm_medium", "email"), 1, 1, 1),
    "utm_campaign jan": (chip("utm_campaign", "jan"), 1, 1, 1),
    "utm_source twitter": (chip("utm_source", "twitter"), 1, 0, 0),
    "country DE": (chip("country", "DE"), 1, 1, 1),
    "country FR": (chip("country", "FR"), 1, 1, 1),
    "country none": (chip("country", None), 1, 0, 0),
    "browser Chrome": (chip("browser", "Chrome"), 1, 1, 1),
    "browser Firefox": (chip("browser", "Firefox"), 2, 0, 0),
    "os Windows": (chip("os", "Windows"), 2, 1, 1),
    "os iOS": (chip("os", "iOS"), 1, 1, 1),
    "device desktop": (chip("device", "desktop"), 4, 1, 1),
    "device mobile": (chip("device", "mobile"), 1, 1, 1),
}


def rate(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else 0.0


# Where a SessionDayPlan reads (migration 0850).
SESSION_DAYS = "query_rollup_session_days"


class PlanSpy:
    """Records where each aggregate query of a request was answered: a cube's table or 'events'."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sources: list[tuple[tuple[str, ...], str]] = []
        original = repository.aggregate

        async def spied(connection: Any, query: AggregateQuery, plan: CubePlan | SessionDayPlan | None) -> Any:
            # A cube's table, the exit-page items' (0900), or the session days.
            table = getattr(plan, "table", None) or getattr(getattr(plan, "cube", None), "table", SESSION_DAYS)
            source = "events" if plan is None else table
            self.sources.append((query.dimensions, source))
            return await original(connection, query, plan)

        monkeypatch.setattr(repository, "aggregate", spied)


@pytest.mark.parametrize("name", list(VISIT_CHIPS))
async def test_goal_conversions_under_each_visit_filter(
    client: AsyncTestClient[Any], dataset: Dataset, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    filters, visitors, pricing, signup = VISIT_CHIPS[name]
    await _main_goals(client, dataset.project)
    spy = PlanSpy(monkeypatch)
    body = await conversions(client, dataset.project, filters=filters)
    assert body["visitors"] == visitors
    by_goal = {(goal["type"], goal["value"]): (goal["visitors"], goal["conversion_rate"]) for goal in body["goals"]}
    assert by_goal[("page", "/pricing")] == (pricing, rate(pricing, visitors))
    assert by_goal[("event", "signup")] == (signup, rate(signup, visitors))
    assert by_goal[("event", "purchase")] == (0, 0.0)
    # Three queries; from the rollups, the event goals' from the event-name rows of the chip's grain.
    expected = "query_rollup_event_names" if dataset.source == "rollups" else "events"
    assert [source for dimensions, source in spy.sources if dimensions == ("event_name",)] == [expected]
    if dataset.source == "rollups":
        assert all(source != "events" for _, source in spy.sources), spy.sources
        assert body["meta"]["exact"] is False


@pytest.mark.parametrize("name", list(VISIT_CHIPS))
async def test_the_custom_events_card_under_each_visit_filter(
    client: AsyncTestClient[Any], dataset: Dataset, name: str
) -> None:
    filters, _, _, signup = VISIT_CHIPS[name]
    not_pageviews = [{"dimension": "event_name", "operator": "is_not", "values": ["pageview"]}]
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "events"],
        dimensions=["event_name"],
        filters=[*filters, *not_pageviews],
        limit=10,
    )
    # Each signup was one event by one visitor.
    assert table(body) == ([["signup", signup, signup]] if signup else [])
    assert body["meta"]["source"] == dataset.source


async def test_session_metrics_by_event_name_under_a_visit_filter(
    client: AsyncTestClient[Any], dataset: Dataset
) -> None:
    """A session counts once in each event name it has an event of: s1 and s4 (from google.com)
    each have pageviews and a signup; neither bounced; s1 lasted 5 min, s4 2 min."""
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "sessions", "bounce_rate", "visit_duration", "events"],
        dimensions=["event_name"],
        filters=chip("referrer", "google.com"),
    )
    assert table(body) == [["pageview", 2, 2, 0, 210.0, 4], ["signup", 2, 2, 0, 210.0, 2]]
    assert body["meta"]["source"] == dataset.source


async def test_event_names_under_a_visit_filter_with_the_previous_period(
    client: AsyncTestClient[Any], dataset: Dataset
) -> None:
    """Jan 12-14 against Jan 9-11 under `country is DE`: v1's s1 (2 pageviews, a signup) and s2
    (1 pageview) now; v1's s0 (/old, Jan 11 23:30) before."""
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "events"],
        dimensions=["event_name"],
        filters=chip("country", "DE"),
        comparison="previous_period",
    )
    assert table(body) == [["pageview", 1, 3], ["signup", 1, 1]]
    assert body["comparison"]["date_range"] == {"date_from": "2026-01-09", "date_to": "2026-01-11"}
    assert table(body["comparison"]) == [["pageview", 1, 1]]
    assert body["meta"]["source"] == dataset.source


def test_every_event_name_shape_with_one_visit_dimension_has_its_grain() -> None:
    """What the Goals and Custom events cards ask, planned onto the event-name rows of the chip's grain."""
    goals = FilterClause("event_name", "is", ("signup", "purchase"))
    not_pageviews = FilterClause("event_name", "is_not", ("pageview",))
    for dimension in VISIT_DIMENSIONS:
        visit = FilterClause(dimension, "is", ("x",))  # type: ignore[arg-type]
        direct = FilterClause(dimension, "is", (), includes_null=True)  # type: ignore[arg-type]
        grain = frozenset({dimension})
        assert cube_for(aggregate(("event_name",), (visit, goals))) == (EVENT_NAMES_CUBE, grain)
        assert cube_for(aggregate(("event_name",), (direct, goals))) == (EVENT_NAMES_CUBE, grain)
        assert cube_for(aggregate(("event_name",), (visit, not_pageviews), ("visitors", "events"))) == (
            EVENT_NAMES_CUBE,
            grain,
        )
        # Broken down by the visit dimension itself, among one event's visitors.
        signup = FilterClause("event_name", "is", ("signup",))
        assert cube_for(aggregate((dimension,), (signup,), ("visitors", "sessions"))) == (EVENT_NAMES_CUBE, grain)
    # Two visit dimensions: their pair's grain (migration 0810); three are not held.
    two = (FilterClause("country", "is", ("DE",)), FilterClause("os", "is", ("iOS",)))
    assert cube_for(aggregate(("event_name",), two)) == (EVENT_NAMES_CUBE, frozenset({"country", "os"}))
    three = (*two, FilterClause("device", "is", ("mobile",)))
    assert cube_for(aggregate(("event_name",), three)) is None
    # Nor an exit page with an event name: no rollup holds both (a page and an entry page have
    # their own event rows, tests/query/test_event_page_filters.py).
    assert cube_for(aggregate(("event_name",), (FilterClause("exit_page", "is", ("/",)),))) is None


async def event_name_rows(engine: AsyncEngine, project_id: int, dimension: str) -> list[tuple[Any, ...]]:
    """(day, event name, value of the visit dimension, visitors, sessions, events) at that dimension's grain."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                f"SELECT day::text, event_name, {dimension}, hll_cardinality(visitors)::bigint, sessions, events"
                " FROM query_rollup_event_names WHERE project_id = :project_id AND grain = :grain"
                " ORDER BY 1, 2, 3 NULLS FIRST"
            ),
            {"project_id": project_id, "grain": grain_id(frozenset({dimension}))},
        )
        return [tuple(row) for row in result]


async def test_merged_event_name_rows_of_a_visit_grain_equal_a_rebuild(
    db: DatabaseHarness, engine: AsyncEngine
) -> None:
    """Each session's events in reverse order, refreshed after each: the country of a visit is
    known only when its first event arrives, last; the merged rows must be those of a rebuild."""
    project = await new_project(db)
    project_id = int(project["id"])
    for batch in earlier_events_arriving_last(main_events()):
        await insert_events(engine, project_id, batch)
        await build_rollups(engine, project)
    merged = await cube_rows(engine, project_id)
    signups = [row for row in await event_name_rows(engine, project_id, "country") if row[1] == "signup"]
    # Hand-computed: v1's signup on Jan 12 in a German visit, v3's on Jan 13 in a French one.
    assert signups == [("2026-01-12", "signup", "DE", 1, 1, 1), ("2026-01-13", "signup", "FR", 1, 1, 1)]
    by_referrer = [row for row in await event_name_rows(engine, project_id, "referrer") if row[0] == "2026-01-13"]
    # Jan 13: v1's direct /blog (session on Jan 13), v3's google.com visit (pageviews and signup),
    # and v2's 00:10 pageview counted on Jan 13 in its Jan 12 visit from news.ycombinator.com
    # (sessions count on their start day).
    assert by_referrer == [
        ("2026-01-13", "pageview", None, 1, 1, 1),
        ("2026-01-13", "pageview", "google.com", 1, 1, 2),
        ("2026-01-13", "pageview", "news.ycombinator.com", 1, 0, 1),
        ("2026-01-13", "signup", "google.com", 1, 1, 1),
    ]
    assert merged == await rebuilt_from_scratch(engine, project)


async def test_erasure_and_retention_remove_the_event_name_rows_of_every_grain(
    db: DatabaseHarness, engine: AsyncEngine, admin_engine: AsyncEngine
) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, main_events())
    await build_rollups(engine, project)
    assert ("2026-01-13", "signup", "FR", 1, 1, 1) in await event_name_rows(engine, project_id, "country")

    # Erasing v3 (the only French visitor) takes every row of her days, every grain, and the
    # rebuild leaves no French row.
    async with admin_engine.begin() as connection:
        deletion = await erase_person(connection, project_id, "v3")
    assert deletion.deleted_rows["query_rollup_event_names"] > 0
    async with engine.connect() as connection:
        left = await connection.execute(
            text("SELECT count(*) FROM query_rollup_event_names WHERE project_id = :p AND day = '2026-01-13'"),
            {"p": project_id},
        )
        assert left.scalar_one() == 0
    await build_rollups(engine, project)
    countries = await event_name_rows(engine, project_id, "country")
    assert [row for row in countries if row[2] == "FR"] == []
    assert [row for row in countries if row[1] == "signup"] == [("2026-01-12", "signup", "DE", 1, 1, 1)]

    # Retention: everything before Jan 13 goes, of every grain.
    # (as `sightline retention apply` calls it; the first kept day is rebuilt from what it keeps).
    async with admin_engine.begin() as connection:
        days = await rollup_purge_repository.rollup_days_through(connection, project_id, date(2026, 1, 13))
        await rollup_purge_repository.lock_days(connection, project_id, days)
        await rollup_purge_repository.purge_before(connection, project_id, date(2026, 1, 13))
    for dimension in VISIT_DIMENSIONS:
        assert [row for row in await event_name_rows(engine, project_id, dimension) if row[0] < "2026-01-13"] == []
    async with engine.connect() as connection:
        old = await connection.execute(
            text("SELECT count(*) FROM query_rollup_event_names WHERE project_id = :p AND day < '2026-01-13'"),
            {"p": project_id},
        )
        assert old.scalar_one() == 0
