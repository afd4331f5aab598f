"""POST /v1/query on the hand-made data set of conftest.main_events; expected numbers by hand."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.query.conftest import RANGE, Dataset, auth, query, table

ALL_METRICS = ["visitors", "pageviews", "sessions", "bounce_rate", "visit_duration", "views_per_session", "events"]


async def test_every_metric_over_the_range(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    body = await query(client, dataset.project, metrics=ALL_METRICS)
    # v1..v5; pageviews E1 E2 E4 E5 E6 E7 E9 E10 E11; 11 events. s3 crosses Berlin midnight and is one
    # session all the same: 6 sessions (s1..s6), of which s2 s5 s6 are bounces (3/6 = 50%); durations
    # 300 + 1200 + 120 s (s1, s3, s4), the rest 0: 1620 / 6 = 270 s; 9 pageviews / 6 sessions = 1.5.
    # The bot and the events on Jan 11 and Jan 15 (Berlin) do not count.
    assert table(body) == [[5, 9, 6, 50.0, 270.0, 1.5, 11]]
    assert body["total_rows"] == 1
    assert body["date_range"] == {"date_from": "2026-01-12", "date_to": "2026-01-14"}
    if dataset.source == "rollups":
        assert body["meta"] == {
            "timezone": "Europe/Berlin",
            "source": "rollups",
            "exact": False,
            "visitors_relative_standard_error": 0.0163,
        }
    else:
        assert body["meta"] == {"timezone": "Europe/Berlin", "source": "events", "exact": True}


async def test_days_are_the_projects_local_days(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    body = await query(
        client, dataset.project, metrics=["visitors", "pageviews", "events", "sessions"], dimensions=["time:day"]
    )
    # s3 crosses Berlin midnight (both events are on Jan 12 in UTC): its /docs view belongs to Jan 13,
    # the session to Jan 12, where it started (Jan 13's sessions are s2 and s4).
    assert table(body) == [
        ["2026-01-12", 2, 3, 4, 2],
        ["2026-01-13", 3, 4, 5, 2],
        ["2026-01-14", 2, 2, 2, 2],
    ]


async def test_hour_week_and_month_buckets(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    hours = await query(client, dataset.project, metrics=["pageviews"], dimensions=["time:hour"])
    assert table(hours) == [
        ["2026-01-12T10:00", 2],
        ["2026-01-12T23:00", 1],
        ["2026-01-13T00:00", 1],
        ["2026-01-13T09:00", 1],
        ["2026-01-13T12:00", 2],
        ["2026-01-14T08:00", 1],
        ["2026-01-14T23:00", 1],
    ]
    # Jan 11 (a Sunday) belongs to the week of Monday Jan 5; Jan 12 is a Monday.
    weeks = await query(
        client,
        dataset.project,
        metrics=["visitors", "pageviews"],
        dimensions=["time:week"],
        date_from="2026-01-11",
    )
    assert table(weeks) == [["2026-01-05", 1, 1], ["2026-01-12", 5, 9]]
    months = await query(client, dataset.project, metrics=["visitors"], dimensions=["time:month"])
    assert table(months) == [["2026-01", 5]]


@pytest.mark.parametrize(
    ("dimension", "expected"),
    [
        (
            "page",
            [
                ["/", 3, 3, 3],
                ["/pricing", 2, 2, 4],
                ["/blog", 1, 1, 1],
                ["/checkout", 1, 1, 1],
                ["/docs", 1, 1, 1],
                ["/late", 1, 1, 1],
            ],
        ),
        ("domain", [["example.com", 4, 8, 10], ["shop.example.org", 1, 1, 1]]),
        # A visit's source is its first event's: s1 and s4 came from google.com; s2 and s6 are direct;
        # s3's /docs view after midnight keeps s3's source, news.ycombinator.com.
        (
            "referrer",
            [["google.com", 2, 4, 6], [None, 2, 2, 2], ["news.ycombinator.com", 1, 2, 2], ["t.co", 1, 1, 1]],
        ),
        ("utm_source", [[None, 4, 6, 7], ["newsletter", 1, 2, 3], ["twitter", 1, 1, 1]]),
        ("utm_medium", [[None, 4, 6, 7], ["email", 1, 2, 3], ["social", 1, 1, 1]]),
        ("utm_campaign", [[None, 5, 7, 8], ["jan", 1, 2, 3]]),
        ("country", [["DE", 1, 3, 4], ["FR", 1, 2, 3], ["GB", 1, 1, 1], ["US", 1, 2, 2], [None, 1, 1, 1]]),
        ("browser", [["Firefox", 2, 3, 3], ["Chrome", 1, 3, 4], ["Edge", 1, 1, 1], ["Mobile Safari", 1, 2, 3]]),
        ("os", [["Windows", 2, 4, 5], ["Linux", 1, 2, 2], ["Mac OS X", 1, 1, 1], ["iOS", 1, 2, 3]]),
        ("device", [["desktop", 4, 7, 8], ["mobile", 1, 2, 3]]),
        ("event_name", [["pageview", 5, 9, 9], ["signup", 2, 0, 2]]),
        # entry pages: s1 s3 s5 start on /, s2 on /blog, s4 on /pricing, s6 on /late
        (
            "entry_page",
            [["/", 3, 5, 6], ["/blog", 1, 1, 1], ["/late", 1, 1, 1], ["/pricing", 1, 2, 3]],
        ),
        # exit pages (last pageview; s1's later signup is not a page):
        # s1 /pricing, s2 /blog, s3 /docs (after midnight), s4 /checkout, s5 /, s6 /late
        (
            "exit_page",
            [
                ["/", 1, 1, 1],
                ["/blog", 1, 1, 1],
                ["/checkout", 1, 2, 3],
                ["/docs", 1, 2, 2],
                ["/late", 1, 1, 1],
                ["/pricing", 1, 2, 3],
            ],
        ),
    ],
)
async def test_each_dimension(
    client: AsyncTestClient[Any], dataset: Dataset, dimension: str, expected: list[list[Any]]
) -> None:
    body = await query(client, dataset.project, metrics=["visitors", "pageviews", "events"], dimensions=[dimension])
    assert table(body) == expected
    assert body["total_rows"] == len(expected)


async def test_session_metrics_by_entry_page(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    body = await query(
        client,
        dataset.project,
        metrics=["sessions", "bounce_rate", "visit_duration", "views_per_session"],
        dimensions=["entry_page"],
        order_by=[{"field": "entry_page", "direction": "asc"}],
    )
    # "/": s1 (300 s, 2 views), s3 (1200 s across midnight, 2 views), s5 (a bounce, 0 s, 1 view)
    # -> 1/3 bounced, 1500 / 3 = 500 s, 5/3 views
    assert table(body) == [
        ["/", 3, 33.33, 500.0, 1.67],
        ["/blog", 1, 100.0, 0.0, 1.0],
        ["/late", 1, 100.0, 0.0, 1.0],
        ["/pricing", 1, 0.0, 120.0, 2.0],
    ]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        # v1 and v3: E1 E2 E4 E7 E9 are pageviews, plus two signups; sessions s1 s2 s4
        ({"dimension": "country", "operator": "is", "values": ["DE", "FR"]}, [2, 5, 7, 3]),
        # null means "none": the direct visits s2 and s6
        ({"dimension": "referrer", "operator": "is", "values": [None]}, [2, 2, 2, 2]),
        ({"dimension": "referrer", "operator": "is", "values": [None, "t.co"]}, [3, 3, 3, 3]),
        # a missing country is "not DE" as well: v2 (s3), v3 (s4), v4 (s5), v5 (s6)
        ({"dimension": "country", "operator": "is_not", "values": ["DE"]}, [4, 6, 7, 4]),
        ({"dimension": "browser", "operator": "is_not", "values": ["Chrome", "Edge"]}, [3, 5, 6, 3]),
        # s1 s3 s4 s5
        ({"dimension": "referrer", "operator": "is_not", "values": [None]}, [4, 7, 9, 4]),
        # case-insensitive substring: E2 E3 E7 E8 in sessions s1 and s4
        ({"dimension": "page", "operator": "contains", "values": ["PRIC"]}, [2, 2, 4, 2]),
        ({"dimension": "page", "operator": "contains", "values": ["late", "blo"]}, [2, 2, 2, 2]),
        # LIKE wildcards in a value are literal characters
        ({"dimension": "page", "operator": "contains", "values": ["_"]}, [0, 0, 0, 0]),
        ({"dimension": "os", "operator": "contains", "values": ["%"]}, [0, 0, 0, 0]),
        ({"dimension": "page", "operator": "matches", "values": ["^/(blog|docs)$"]}, [2, 2, 2, 2]),
        ({"dimension": "utm_campaign", "operator": "matches", "values": ["^ja"]}, [1, 2, 3, 1]),
        ({"dimension": "event_name", "operator": "is", "values": ["signup"]}, [2, 0, 2, 2]),
        ({"dimension": "entry_page", "operator": "is", "values": ["/"]}, [3, 5, 6, 3]),
        # exit pages with an "o": /blog (s2), /docs (s3), /checkout (s4)
        ({"dimension": "exit_page", "operator": "contains", "values": ["o"]}, [3, 5, 6, 3]),
        ({"dimension": "device", "operator": "is", "values": ["mobile"]}, [1, 2, 3, 1]),
        ({"dimension": "domain", "operator": "is_not", "values": ["example.com"]}, [1, 1, 1, 1]),
        ({"dimension": "utm_medium", "operator": "is", "values": ["social"]}, [1, 1, 1, 1]),
        ({"dimension": "utm_source", "operator": "is", "values": ["newsletter"]}, [1, 2, 3, 1]),
        ({"dimension": "os", "operator": "is", "values": ["Linux"]}, [1, 2, 2, 1]),
    ],
)
async def test_each_filter_operator(
    client: AsyncTestClient[Any], dataset: Dataset, condition: dict[str, Any], expected: list[int]
) -> None:
    body = await query(
        client, dataset.project, metrics=["visitors", "pageviews", "events", "sessions"], filters=[condition]
    )
    assert table(body) == [expected]


async def test_filters_combine_with_and(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    body = await query(
        client,
        dataset.project,
        metrics=["visitors", "pageviews", "events"],
        filters=[
            {"dimension": "country", "operator": "is", "values": ["DE"]},
            {"dimension": "page", "operator": "is", "values": ["/pricing"]},
        ],
    )
    assert table(body) == [[1, 1, 2]]


async def test_session_metrics_follow_the_filter(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    body = await query(
        client,
        dataset.project,
        metrics=["sessions", "bounce_rate", "visit_duration"],
        filters=[{"dimension": "page", "operator": "is", "values": ["/pricing"]}],
    )
    # sessions with a /pricing event: s1 (300 s) and s4 (120 s), neither a bounce
    assert table(body) == [[2, 0.0, 210.0]]


async def test_comparison_with_the_previous_period(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    body = await query(client, dataset.project, metrics=["visitors", "pageviews"], comparison="previous_period")
    assert table(body) == [[5, 9]]
    # three days before Jan 12..14 are Jan 9..11, where only v1's /old on Jan 11 23:30 falls
    assert body["comparison"]["date_range"] == {"date_from": "2026-01-09", "date_to": "2026-01-11"}
    assert [row["metrics"] for row in body["comparison"]["results"]] == [[1, 1]]
    grouped = await query(
        client, dataset.project, metrics=["pageviews"], dimensions=["page"], comparison="previous_period"
    )
    assert [row["dimensions"] + row["metrics"] for row in grouped["comparison"]["results"]] == [["/old", 1]]


async def test_ordering_limit_and_pagination(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    ordered = await query(
        client,
        dataset.project,
        metrics=["pageviews"],
        dimensions=["page"],
        order_by=[{"field": "page", "direction": "asc"}],
    )
    assert [row[0] for row in table(ordered)] == ["/", "/blog", "/checkout", "/docs", "/late", "/pricing"]
    page = await query(client, dataset.project, metrics=["pageviews"], dimensions=["page"], limit=2, offset=2)
    assert table(page) == [["/blog", 1], ["/checkout", 1]]
    assert (page["total_rows"], page["limit"], page["offset"]) == (6, 2, 2)
    past_the_end = await query(client, dataset.project, metrics=["pageviews"], dimensions=["page"], offset=10)
    assert (table(past_the_end), past_the_end["total_rows"]) == ([], 6)
    ascending = await query(
        client,
        dataset.project,
        metrics=["visitors", "pageviews"],
        dimensions=["browser"],
        order_by=[{"field": "pageviews", "direction": "asc"}, {"field": "visitors", "direction": "desc"}],
    )
    assert table(ascending) == [["Edge", 1, 1], ["Mobile Safari", 1, 2], ["Firefox", 2, 3], ["Chrome", 1, 3]]


async def test_two_dimensions(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    body = await query(client, dataset.project, metrics=["visitors"], dimensions=["time:day", "device"])
    assert table(body) == [
        ["2026-01-12", "desktop", 2],
        ["2026-01-13", "desktop", 2],
        ["2026-01-13", "mobile", 1],
        ["2026-01-14", "desktop", 2],
    ]


async def test_a_key_reads_only_its_own_project(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    other = await query(client, dataset.other_project, metrics=["visitors", "pageviews"])
    assert table(other) == [[1, 2]]
    own = await query(client, dataset.project, metrics=["visitors"], filters=[])
    assert table(own) == [[5]]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk_not_a_real_key"}, {"Authorization": "Basic abc"}],
)
async def test_missing_or_wrong_key_is_401(
    client: AsyncTestClient[Any], dataset: Dataset, headers: dict[str, str]
) -> None:
    response = await client.post("/v1/query", json={**RANGE, "metrics": ["visitors"]}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"missing_credentials", "invalid_key"}


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        ({"metrics": ["visitorz"]}, "metrics[0]", ""),
        ({"metrics": []}, "metrics", ""),
        ({"metrics": ["visitors"], "dimensions": ["city"]}, "dimensions[0]", ""),
        ({"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "like", "values": ["/"]}]}, "", ""),
        ({"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "is", "values": []}]}, "", ""),
        ({"metrics": ["visitors", "visitors"]}, "metrics[1]", "twice"),
        ({"metrics": ["visitors"], "dimensions": ["time:day", "time:hour"]}, "dimensions", "time dimension"),
        ({"metrics": ["visitors"], "order_by": [{"field": "country"}]}, "order_by[0].field", "country"),
        ({"metrics": ["visitors"], "period": "custom", "date_from": None}, "date_from", "date_from"),
        ({"metrics": ["visitors"], "date_from": "2026-01-15"}, "date_from", "after"),
        ({"metrics": ["visitors"], "period": "7d"}, "period", "custom"),
        ({"metrics": ["visitors"], "date_from": "2020-01-01"}, "date_to", "at most"),
        ({"metrics": ["visitors"], "limit": 0}, "limit", ""),
        (
            {"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "matches", "values": ["("]}]},
            "filters",
            "regular expression",
        ),
        (
            {"metrics": ["visitors"], "filters": [{"dimension": "page", "operator": "contains", "values": [None]}]},
            "filters[0].values",
            "null",
        ),
    ],
)
async def test_invalid_specs_are_422_naming_the_problem(
    client: AsyncTestClient[Any], dataset: Dataset, spec: dict[str, Any], field: str, fragment: str
) -> None:
    response = await client.post("/v1/query", json={**RANGE, **spec}, headers=auth(dataset.project))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] in {"invalid_query", "invalid_request"}
    if field:
        assert error["field"].endswith(field) or field in error["field"], error
    assert fragment in error["message"], error
