"""A session is one session whatever days it spans: midnight, week, month and DST boundaries, and
the edges of the queried range, each from raw events and from rollups (hand-computed answers).

The rule (README, "Dashboard queries"): a session belongs to the range and to the time bucket in
which it started; its duration, views per session, entry and exit pages and bounce are the whole
session's; pageviews, events and visitors count the events inside the range (or bucket).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness import DatabaseHarness
from tests.query.conftest import Event, auth, build_rollups, insert_events, new_project, table

NEW_YORK = ZoneInfo("America/New_York")


def ny(timestamp: str, fold: int = 0) -> datetime:
    return datetime.fromisoformat(timestamp).replace(tzinfo=NEW_YORK, fold=fold).astimezone(UTC)


# New York wall-clock times. 2026-03-01 is a Sunday; DST starts 2026-03-08 at 02:00 (clocks jump to 03:00).
#  sM (m): Sat Feb 28 23:50 / (from google.com), Sun Mar 1 00:20 /m2     -> month boundary, 1800 s
#  sW (w): Sun Mar 1 23:55 /w (from t.co), Mon Mar 2 00:05 /w2, 00:06 /w3 -> week boundary, 660 s
#  sB (b): Mon Mar 2 12:00 /b                                             -> a bounce
#  sD (d): Sun Mar 8 01:50 EST /d, 03:10 EDT /d2                         -> across the DST jump: 20 min
def boundary_events() -> list[Event]:
    return [
        Event("m", "sM", ny("2026-02-28T23:50:00"), "/", referrer_domain="google.com"),
        Event("m", "sM", ny("2026-03-01T00:20:00"), "/m2"),
        Event("w", "sW", ny("2026-03-01T23:55:00"), "/w", referrer_domain="t.co"),
        Event("w", "sW", ny("2026-03-02T00:05:00"), "/w2"),
        Event("w", "sW", ny("2026-03-02T00:06:00"), "/w3"),
        Event("b", "sB", ny("2026-03-02T12:00:00"), "/b"),
        Event("d", "sD", ny("2026-03-08T01:50:00"), "/d"),
        Event("d", "sD", ny("2026-03-08T03:10:00"), "/d2"),
    ]


@pytest.fixture(params=["events", "rollups"])
async def project(request: pytest.FixtureRequest, db: DatabaseHarness, engine: AsyncEngine) -> dict[str, Any]:
    created = await new_project(db, timezone="America/New_York")
    await insert_events(engine, int(created["id"]), boundary_events())
    if request.param == "rollups":
        await build_rollups(engine, created)
    created["source"] = request.param
    return created


async def ask(client: AsyncTestClient[Any], project: dict[str, Any], date_from: str, date_to: str, **spec: Any) -> Any:
    response = await client.post(
        "/v1/query",
        json={"period": "custom", "date_from": date_from, "date_to": date_to, **spec},
        headers=auth(project),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["meta"]["source"] == project["source"]
    return body


SESSION_METRICS = ["visitors", "pageviews", "sessions", "bounce_rate", "visit_duration", "views_per_session"]


async def test_each_session_counts_once_with_its_whole_duration(
    client: AsyncTestClient[Any], project: dict[str, Any]
) -> None:
    body = await ask(client, project, "2026-02-28", "2026-03-08", metrics=SESSION_METRICS)
    # 4 sessions, 8 pageviews, one bounce (sB); (1800 + 660 + 0 + 1200) / 4 = 915 s; 8 / 4 views.
    assert table(body) == [[4, 8, 4, 25.0, 915.0, 2.0]]


async def test_a_session_is_in_the_day_week_and_month_it_started(
    client: AsyncTestClient[Any], project: dict[str, Any]
) -> None:
    metrics = ["pageviews", "sessions", "visit_duration"]
    days = await ask(client, project, "2026-02-28", "2026-03-08", metrics=metrics, dimensions=["time:day"])
    # Pageviews by their own day; each session once, on its start day, with its whole duration.
    assert table(days) == [
        ["2026-02-28", 1, 1, 1800.0],
        ["2026-03-01", 2, 1, 660.0],
        ["2026-03-02", 3, 1, 0.0],
        ["2026-03-08", 2, 1, 1200.0],
    ]
    weeks = await ask(
        client, project, "2026-02-28", "2026-03-08", metrics=["visitors", *metrics], dimensions=["time:week"]
    )
    # Week of Mon Feb 23: sM and sW (started Sunday Mar 1); week of Mar 2: sB and sD, plus sW's two views.
    assert table(weeks) == [["2026-02-23", 2, 3, 2, 1230.0], ["2026-03-02", 3, 5, 2, 600.0]]
    months = await ask(client, project, "2026-02-28", "2026-03-08", metrics=metrics, dimensions=["time:month"])
    assert table(months) == [["2026-02", 1, 1, 1800.0], ["2026-03", 7, 3, 620.0]]


async def test_hours_follow_the_dst_change(client: AsyncTestClient[Any], project: dict[str, Any]) -> None:
    body = await ask(
        client, project, "2026-03-08", "2026-03-08", metrics=["pageviews", "sessions"], dimensions=["time:hour"]
    )
    # 02:00-03:00 does not exist on Mar 8 in New York; the session is in the hour it started.
    assert table(body) == [["2026-03-08T01:00", 1, 1], ["2026-03-08T03:00", 1, 0]]


async def test_the_ranges_edges(client: AsyncTestClient[Any], project: dict[str, Any]) -> None:
    # Mar 1 alone: sW started on it (its whole 660 s and 3 views count, though two are on Mar 2);
    # sM started on Feb 28, so only its /m2 view counts.
    first = await ask(client, project, "2026-03-01", "2026-03-01", metrics=SESSION_METRICS)
    assert table(first) == [[2, 2, 1, 0.0, 660.0, 3.0]]
    # Mar 2 alone: only sB started on it; sW's views on Mar 2 count as pageviews.
    second = await ask(client, project, "2026-03-02", "2026-03-02", metrics=SESSION_METRICS)
    assert table(second) == [[2, 3, 1, 100.0, 0.0, 1.0]]
    entries = await ask(
        client,
        project,
        "2026-03-01",
        "2026-03-01",
        metrics=["pageviews", "sessions"],
        dimensions=["entry_page"],
        order_by=[{"field": "entry_page", "direction": "asc"}],
    )
    # /m2's view is in sM, entered on / (on Feb 28): a pageview of the entry page /, no session.
    assert table(entries) == [["/", 1, 0], ["/w", 1, 1]]
    exits = await ask(client, project, "2026-03-01", "2026-03-01", metrics=["sessions"], dimensions=["exit_page"])
    # sW left on /w3, after the range: its exit page is still /w3. sM (exit /m2) did not start on Mar 1.
    assert table(exits) == [["/w3", 1], ["/m2", 0]]
    sources = await ask(
        client, project, "2026-03-02", "2026-03-02", metrics=["pageviews", "sessions"], dimensions=["referrer"]
    )
    # sW's views on Mar 2 keep the source of the visit (t.co), which began the day before.
    assert table(sources) == [["t.co", 2, 0], [None, 1, 1]]


async def test_a_session_is_in_every_page_group_of_its_whole_visit(
    client: AsyncTestClient[Any], project: dict[str, Any]
) -> None:
    body = await ask(
        client,
        project,
        "2026-03-01",
        "2026-03-01",
        metrics=["pageviews", "sessions"],
        dimensions=["page"],
        order_by=[{"field": "page", "direction": "asc"}],
    )
    # sW started on Mar 1 and viewed /w, /w2, /w3 (the last two on Mar 2): it is a session of each.
    assert table(body) == [["/m2", 1, 0], ["/w", 1, 1], ["/w2", 0, 1], ["/w3", 0, 1]]
