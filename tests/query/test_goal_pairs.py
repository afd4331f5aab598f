"""The saved page goals per pair of visit dimensions (issue #15, migration 1000).

Under two visit chips the Goals card's page goals read `query_rollup_goal_pairs` (per day, goal
page and pair of visit dimensions, a visitor sketch of the session days holding the page) for
the days whose pairs are current (their marker's `built_at` and goal pages), the session days
for the other rolled days, events for the rest. Figures on the main data set
(tests/query/conftest.py), Jan 12-14 in Berlin (events on Jan 11 and 15 outside the range, so
Jan 15 is the latest day, never given pairs):

- s1 (v1, Jan 12; DE, Chrome, desktop, google.com): /, /pricing, `signup`;
- s2 (v1, Jan 13; DE, Chrome, desktop, direct): /blog;
- s3 (v2, Jan 12-13; US, Firefox, desktop, news.ycombinator.com): /, /docs;
- s4 (v3, Jan 13; FR, Mobile Safari, iOS, mobile, google.com): /pricing, `signup`, /checkout;
- s5 (v4, Jan 14; no country, Edge, t.co): /; s6 (v5, Jan 14; GB, Firefox): /late.

Goals: pages /pricing, /checkout, /old; events signup, purchase. Small sets: a sketch of a few
visitors counts them exactly (HyperLogLog's explicit form), so the figures are exact here.
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
from services.query import goal_pairs_repository, repository
from services.query.app import create_app
from services.query.planner import goal_pairs_grain
from services.query.repository import AggregateQuery, FilterClause, GoalPairsPlan
from services.query.settings import QuerySettings
from services.query.vocabulary import grain_id
from services.replay.erasure import erase_person
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
from tests.query.test_event_name_filters import SESSION_DAYS, PlanSpy, chip
from tests.query.test_goals import _main_goals, add_goal, conversions
from tests.query.test_rollup_increments import SCENARIOS, rebuilt_from_scratch

GOAL_PAIRS = "query_rollup_goal_pairs"
GOAL_PAGES = ["/pricing", "/checkout", "/old"]
JAN_12_TO_14 = (date(2026, 1, 12), date(2026, 1, 13), date(2026, 1, 14))


def listed(*pages: str) -> dict[str, Any]:
    return {"dimension": "page", "operator": "is", "values": list(pages)}


# Two visit chips: the page goals' visitors under them.
PAIRS: dict[str, tuple[list[dict[str, Any]], list[list[Any]]]] = {
    "country FR, device mobile": (
        [*chip("country", "FR"), *chip("device", "mobile")],
        [["/checkout", 1], ["/pricing", 1]],
    ),
    "country DE, device desktop": ([*chip("country", "DE"), *chip("device", "desktop")], [["/pricing", 1]]),
    "referrer google.com, os iOS": (
        [*chip("referrer", "google.com"), *chip("os", "iOS")],
        [["/checkout", 1], ["/pricing", 1]],
    ),
    # v1 (DE) and v3 (FR) both came from google.com and viewed /pricing.
    "referrer google.com, country not GB": (
        [*chip("referrer", "google.com"), {"dimension": "country", "operator": "is_not", "values": ["GB"]}],
        [["/pricing", 2], ["/checkout", 1]],
    ),
    "country US, browser Firefox": ([*chip("country", "US"), *chip("browser", "Firefox")], []),
    # Direct (no referrer) and DE: s2, /blog only.
    "referrer direct, country DE": ([*chip("referrer", None), *chip("country", "DE")], []),
    "utm_source newsletter, utm_campaign jan": (
        [*chip("utm_source", "newsletter"), *chip("utm_campaign", "jan")],
        [["/pricing", 1]],
    ),
}


@pytest.fixture
async def raw_client(db: DatabaseHarness) -> AsyncIterator[AsyncTestClient[Any]]:
    """A query service that never reads the rollups: the raw path's answer to compare with."""
    settings = QuerySettings(rollups=False, rollup_interval_s=0)
    async with AsyncTestClient(create_app(db.database, query_settings=settings)) as test_client:
        yield test_client


class GoalPairsSpy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.plans: list[GoalPairsPlan] = []
        original = repository.aggregate

        async def spied(connection: Any, query: AggregateQuery, plan: Any) -> Any:
            if isinstance(plan, GoalPairsPlan):
                self.plans.append(plan)
            return await original(connection, query, plan)

        monkeypatch.setattr(repository, "aggregate", spied)


async def goals_project(db: DatabaseHarness, engine: AsyncEngine, client: AsyncTestClient[Any]) -> dict[str, Any]:
    """The main data with its goals, rolled up and the goal pairs made (the round after the
    goals: days built earlier have none)."""
    project = await new_project(db)
    await insert_events(engine, int(project["id"]), main_events())
    await build_rollups(engine, project)
    await _main_goals(client, project)
    await build_rollups(engine, project)
    return project


async def pair_days(engine: AsyncEngine, project_id: int) -> list[tuple[str, list[str]]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT m.day::text, m.pages FROM query_rollup_goal_pair_days m JOIN query_rollup_days d"
                " ON d.project_id = m.project_id AND d.day = m.day"
                " WHERE m.project_id = :p AND m.built_at = d.built_at ORDER BY 1"
            ),
            {"p": project_id},
        )
        return [(row[0], list(row[1])) for row in result]


async def pair_rows(engine: AsyncEngine, project_id: int) -> list[tuple[Any, ...]]:
    """Every goal pair row, its sketch as the visitors it counts."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT day::text, grain, page, referrer, utm_source, utm_medium, utm_campaign, country, browser,"
                " os, device, round(hll_cardinality(visitors))::int FROM query_rollup_goal_pairs"
                " WHERE project_id = :p ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11"
            ),
            {"p": project_id},
        )
        return [tuple(row) for row in result]


@pytest.mark.parametrize("name", list(PAIRS))
async def test_page_goals_under_two_visit_chips_from_the_goal_pairs(
    db: DatabaseHarness,
    engine: AsyncEngine,
    client: AsyncTestClient[Any],
    raw_client: AsyncTestClient[Any],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    chips, expected = PAIRS[name]
    project = await goals_project(db, engine, client)
    # Every built day but the latest (Jan 15) has pairs of the goal pages.
    assert await pair_days(engine, int(project["id"])) == [
        (day, sorted(GOAL_PAGES)) for day in ("2026-01-11", "2026-01-12", "2026-01-13", "2026-01-14")
    ]
    spy = GoalPairsSpy(monkeypatch)
    sources = PlanSpy(monkeypatch)
    filters = [*chips, listed(*GOAL_PAGES)]
    body = await query(client, project, metrics=["visitors"], dimensions=["page"], filters=filters)
    assert table(body) == expected
    assert body["meta"]["exact"] is False
    assert [source for _, source in sources.sources] == [GOAL_PAIRS]
    assert [(plan.rolled_days, plan.session_days, plan.computed_days) for plan in spy.plans] == [(JAN_12_TO_14, (), ())]
    raw = await query(raw_client, project, metrics=["visitors"], dimensions=["page"], filters=filters)
    assert table(raw) == expected
    # The Goals card: the same page goals, the event goals from the pair's event-name rows.
    card = await conversions(client, project, filters=chips)
    reached = {(goal["type"], goal["value"]): goal["visitors"] for goal in card["goals"]}
    assert {value: reached[("page", value)] for value in GOAL_PAGES} == {
        value: dict((page, visitors) for page, visitors in expected).get(value, 0) for value in GOAL_PAGES
    }
    raw_card = await conversions(raw_client, project, filters=chips)
    assert raw_card["goals"] == card["goals"]


async def test_a_visitor_on_several_days_counts_once(
    db: DatabaseHarness, engine: AsyncEngine, client: AsyncTestClient[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1 (DE, desktop) views /pricing on Jan 12 (s1) and, in a later batch, on Jan 13 (s2) and Jan
    14 (s8): one visitor, three days' sketches unioned."""
    project = await goals_project(db, engine, client)
    await insert_events(
        engine,
        int(project["id"]),
        [
            Event("v1", "s2", berlin("2026-01-13T09:05:00"), "/pricing"),
            Event("v1", "s8", berlin("2026-01-14T09:00:00"), "/pricing"),
        ],
    )
    await build_rollups(engine, project)
    spy = GoalPairsSpy(monkeypatch)
    filters = [*chip("country", "DE"), *chip("device", "desktop"), listed(*GOAL_PAGES)]
    body = await query(client, project, metrics=["visitors"], dimensions=["page"], filters=filters)
    assert table(body) == [["/pricing", 1]]
    assert [plan.rolled_days for plan in spy.plans] == [JAN_12_TO_14]


async def test_a_goal_saved_or_deleted_after_the_pairs_were_made(
    db: DatabaseHarness,
    engine: AsyncEngine,
    client: AsyncTestClient[Any],
    raw_client: AsyncTestClient[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new page goal (/docs: v2, US, Firefox) is in no day's pairs: the card reads the session
    days (exact) until a refresher round has remade the days; a deleted one changes the goal
    pages too, and the days are remade without it."""
    project = await goals_project(db, engine, client)
    project_id = int(project["id"])
    docs = await add_goal(client, project, type="page", value="/docs")
    chips = [*chip("country", "US"), *chip("browser", "Firefox")]
    sources = PlanSpy(monkeypatch)
    body = await conversions(client, project, filters=chips)
    reached = {(goal["type"], goal["value"]): goal["visitors"] for goal in body["goals"]}
    assert reached[("page", "/docs")] == 1
    assert reached[("page", "/pricing")] == 0
    assert dict(sources.sources)[("page",)] == SESSION_DAYS
    assert body["meta"]["exact"] is False  # the event goals' pair rows are sketches

    await build_rollups(engine, project)
    goal_pages = sorted([*GOAL_PAGES, "/docs"])
    assert [pages for _, pages in await pair_days(engine, project_id)] == [goal_pages] * 4
    sources.sources.clear()
    again = await conversions(client, project, filters=chips)
    assert again["goals"] == body["goals"]
    assert dict(sources.sources)[("page",)] == GOAL_PAIRS
    assert (await conversions(raw_client, project, filters=chips))["goals"] == body["goals"]

    # Deleted: every day is remade for the goal pages left.
    response = await client.delete(f"/v1/goals/{docs['id']}", headers=auth(project))
    assert response.status_code in (200, 204), response.text
    await build_rollups(engine, project)
    assert [pages for _, pages in await pair_days(engine, project_id)] == [sorted(GOAL_PAGES)] * 4
    # (/old: v1 on Jan 11, outside the range.)
    assert {row[2] for row in await pair_rows(engine, project_id)} == {"/pricing", "/checkout", "/old"}


async def test_a_day_merged_into_is_read_from_its_session_days_until_remade(
    db: DatabaseHarness,
    engine: AsyncEngine,
    client: AsyncTestClient[Any],
    raw_client: AsyncTestClient[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A late event on Jan 13 (v3 goes on to /old) is merged: Jan 13's pairs no longer match its
    session days, so that day is read from them (in the same statement as the other days' pairs)
    until a round remakes them; the remade rows are those of a rebuild from scratch."""
    project = await goals_project(db, engine, client)
    project_id = int(project["id"])
    fr = {"country": "FR", "browser": "Mobile Safari", "os": "iOS", "device_type": "mobile"}
    await insert_events(engine, project_id, [Event("v3", "s4", berlin("2026-01-13T12:05:00"), "/old", **fr)])  # type: ignore[arg-type]
    monkeypatch.setattr(goal_pairs_repository, "REMAKE_DAYS_PER_ROUND", 0)
    await build_rollups(engine, project)
    assert [day for day, _ in await pair_days(engine, project_id)] == ["2026-01-11", "2026-01-12", "2026-01-14"]
    spy = GoalPairsSpy(monkeypatch)
    filters = [*chip("country", "FR"), *chip("device", "mobile"), listed(*GOAL_PAGES)]
    expected = [["/checkout", 1], ["/old", 1], ["/pricing", 1]]
    body = await query(client, project, metrics=["visitors"], dimensions=["page"], filters=filters)
    assert table(body) == expected
    assert (
        table(await query(raw_client, project, metrics=["visitors"], dimensions=["page"], filters=filters)) == expected
    )
    assert [(plan.rolled_days, plan.session_days) for plan in spy.plans] == [
        ((date(2026, 1, 12), date(2026, 1, 14)), (date(2026, 1, 13),))
    ]

    monkeypatch.setattr(goal_pairs_repository, "REMAKE_DAYS_PER_ROUND", 4)
    await build_rollups(engine, project)
    assert [day for day, _ in await pair_days(engine, project_id)] == [
        "2026-01-11",
        "2026-01-12",
        "2026-01-13",
        "2026-01-14",
    ]
    spy.plans.clear()
    assert table(await query(client, project, metrics=["visitors"], dimensions=["page"], filters=filters)) == expected
    assert [(plan.rolled_days, plan.session_days) for plan in spy.plans] == [(JAN_12_TO_14, ())]
    incremental = await pair_rows(engine, project_id)
    assert ("2026-01-13", grain_id(frozenset({"country", "device"})), "/old") in {row[:3] for row in incremental}
    await rebuilt_from_scratch(engine, project)
    # From scratch the goal pairs come in the rounds after the days are built.
    await build_rollups(engine, project)
    assert await pair_rows(engine, project_id) == incremental


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_refreshing_after_every_batch_equals_one_rebuild_from_scratch(
    db: DatabaseHarness, engine: AsyncEngine, client: AsyncTestClient[Any], scenario: str
) -> None:
    """Goals saved first, then events in batches with a refresh after each (merges, late events,
    rebuilds, goal pairs remade as days change): every day's current pairs equal those made
    after one rebuild from scratch, and so do the markers' days."""
    project = await new_project(db)
    project_id = int(project["id"])
    await _main_goals(client, project)
    for batch in SCENARIOS[scenario](main_events()):
        await insert_events(engine, project_id, batch)
        await build_rollups(engine, project)
    days = await pair_days(engine, project_id)
    current = {day for day, _ in days}
    merged = [row for row in await pair_rows(engine, project_id) if row[0] in current]
    assert merged
    # Every built day but the latest (Jan 15) is current after the refresh.
    assert [day for day, _ in days] == ["2026-01-11", "2026-01-12", "2026-01-13", "2026-01-14"]
    await rebuilt_from_scratch(engine, project)
    await build_rollups(engine, project)
    assert await pair_days(engine, project_id) == days
    assert await pair_rows(engine, project_id) == merged


async def test_days_not_rolled_up_are_computed_from_their_events(
    db: DatabaseHarness,
    engine: AsyncEngine,
    client: AsyncTestClient[Any],
    raw_client: AsyncTestClient[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """v3 views /old on Jan 14 and no refresh follows: Jan 14 is computed from its events, the
    other days from their pairs, in one statement."""
    project = await goals_project(db, engine, client)
    fr = {"country": "FR", "browser": "Mobile Safari", "os": "iOS", "device_type": "mobile"}
    await insert_events(engine, int(project["id"]), [Event("v3", "s9", berlin("2026-01-14T12:00:00"), "/old", **fr)])  # type: ignore[arg-type]
    spy = GoalPairsSpy(monkeypatch)
    filters = [*chip("country", "FR"), *chip("device", "mobile"), listed(*GOAL_PAGES)]
    expected = [["/checkout", 1], ["/old", 1], ["/pricing", 1]]
    assert table(await query(client, project, metrics=["visitors"], dimensions=["page"], filters=filters)) == expected
    assert (
        table(await query(raw_client, project, metrics=["visitors"], dimensions=["page"], filters=filters)) == expected
    )
    assert [(plan.rolled_days, plan.computed_days) for plan in spy.plans] == [
        ((date(2026, 1, 12), date(2026, 1, 13)), (date(2026, 1, 14),))
    ]


async def test_erasure_and_retention_remove_the_goal_pairs(
    db: DatabaseHarness, engine: AsyncEngine, admin_engine: AsyncEngine, client: AsyncTestClient[Any]
) -> None:
    project = await goals_project(db, engine, client)
    project_id = int(project["id"])
    fr_mobile = ("FR", "mobile")
    assert [row for row in await pair_rows(engine, project_id) if row[7:11:3] == fr_mobile] != []

    # Erasing v3 takes every goal pair of her day (Jan 13); the remade day has none of hers.
    async with admin_engine.begin() as connection:
        deletion = await erase_person(connection, project_id, "v3")
    assert deletion.deleted_rows[GOAL_PAIRS] > 0
    assert deletion.deleted_rows["query_rollup_goal_pair_days"] == 1
    assert [row for row in await pair_rows(engine, project_id) if row[0] == "2026-01-13"] == []
    await build_rollups(engine, project)
    rows = await pair_rows(engine, project_id)
    # Remade: v1's /blog and v2's /docs are no goal page, so the day has a marker and no row.
    assert "2026-01-13" in [day for day, _ in await pair_days(engine, project_id)]
    assert [row for row in rows if row[0] == "2026-01-13"] == []
    assert [row for row in rows if row[7:11:3] == fr_mobile] == []
    filters = [*chip("country", "FR"), *chip("device", "mobile"), listed(*GOAL_PAGES)]
    assert table(await query(client, project, metrics=["visitors"], dimensions=["page"], filters=filters)) == []

    # Retention: every goal pair and marker before Jan 13 goes.
    async with admin_engine.begin() as connection:
        days = await rollup_purge_repository.rollup_days_through(connection, project_id, date(2026, 1, 13))
        await rollup_purge_repository.lock_days(connection, project_id, days)
        counts = await rollup_purge_repository.purge_before(connection, project_id, date(2026, 1, 13))
    assert counts.increment_rows[GOAL_PAIRS] > 0
    assert [row for row in await pair_rows(engine, project_id) if row[0] < "2026-01-13"] == []
    assert [day for day, _ in await pair_days(engine, project_id) if day < "2026-01-13"] == []


def _query(*filters: FilterClause, metrics: tuple[str, ...] = ("visitors",)) -> AggregateQuery:
    return AggregateQuery(
        project_id=1,
        timezone="UTC",
        start=berlin("2026-01-12T00:00:00"),
        end=berlin("2026-01-15T00:00:00"),
        metrics=metrics,  # type: ignore[arg-type]
        dimensions=("page",),
        filters=filters,
        order_by=(),
        limit=10,
        offset=0,
    )


def _is(dimension: str, *values: str | None) -> FilterClause:
    return FilterClause(
        dimension,  # type: ignore[arg-type]
        "is",
        tuple(value for value in values if value is not None),
        includes_null=None in values,
    )


def test_which_queries_the_goal_pairs_answer() -> None:
    pages = _is("page", "/pricing", "/checkout")
    assert goal_pairs_grain(_query(pages, _is("country", "DE"), _is("device", "mobile"))) == frozenset(
        {"country", "device"}
    )
    # Two clauses on one of the pair's dimensions: still that pair.
    assert goal_pairs_grain(_query(pages, _is("country", "DE"), _is("country", "DE", "FR"), _is("os", "iOS"))) == (
        frozenset({"country", "os"})
    )
    # One visit chip (the page cube's grain answers it), three, none.
    assert goal_pairs_grain(_query(pages, _is("country", "DE"))) is None
    assert goal_pairs_grain(_query(pages, _is("country", "DE"), _is("device", "mobile"), _is("os", "iOS"))) is None
    assert goal_pairs_grain(_query(pages)) is None
    # Pages not listed with `is`, two page filters, an exit-page chip, other metrics.
    assert goal_pairs_grain(_query(_is("country", "DE"), _is("device", "mobile"))) is None
    assert (
        goal_pairs_grain(_query(pages, _is("page", "/pricing"), _is("country", "DE"), _is("device", "mobile"))) is None
    )
    assert goal_pairs_grain(_query(pages, _is("exit_page", "/"), _is("device", "mobile"))) is None
    assert (
        goal_pairs_grain(
            _query(pages, _is("country", "DE"), _is("device", "mobile"), metrics=("visitors", "pageviews"))
        )
        is None
    )
    assert (
        goal_pairs_grain(_query(_is("page", "/pricing", None), _is("country", "DE"), _is("device", "mobile"))) is None
    )
