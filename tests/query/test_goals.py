"""Goals: saved per project (GET/POST/DELETE /v1/goals) and their conversions (POST /v1/goals/conversions).

Conversions on the main data set (tests/query/conftest.py), Jan 12-14 in Berlin: five visitors
(v1..v5; the bot and the other project never count). /pricing was reached by v1 and v3, the
signup event sent by v1 and v3, /checkout by v3 alone; /old only before the range.
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.harness import DatabaseHarness
from tests.query.conftest import RANGE, Dataset, auth, new_project


async def add_goal(client: AsyncTestClient[Any], project: dict[str, Any], **goal: Any) -> dict[str, Any]:
    response = await client.post("/v1/goals", json=goal, headers=auth(project))
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def conversions(client: AsyncTestClient[Any], project: dict[str, Any], **spec: Any) -> dict[str, Any]:
    response = await client.post("/v1/goals/conversions", json={**RANGE, **spec}, headers=auth(project))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def figures(body: dict[str, Any]) -> list[tuple[str, str, int, float]]:
    return [(goal["type"], goal["value"], goal["visitors"], goal["conversion_rate"]) for goal in body["goals"]]


async def test_goals_are_saved_per_project(client: AsyncTestClient[Any], db: DatabaseHarness) -> None:
    project = await new_project(db)
    other = await new_project(db)
    pricing = await add_goal(client, project, type="page", value="/pricing")
    signup = await add_goal(client, project, type="event", value="signup", name="Signed up")
    assert (pricing["name"], pricing["type"], pricing["value"]) == ("/pricing", "page", "/pricing")
    assert (signup["name"], signup["type"], signup["value"]) == ("Signed up", "event", "signup")
    listed = (await client.get("/v1/goals", headers=auth(project))).json()["goals"]
    assert [goal["id"] for goal in listed] == [pricing["id"], signup["id"]]
    # Another project's key sees none of them and cannot delete them.
    assert (await client.get("/v1/goals", headers=auth(other))).json() == {"goals": []}
    assert (await client.delete(f"/v1/goals/{pricing['id']}", headers=auth(other))).status_code == 404
    # The same value as another kind is another goal; the same kind and value again is refused.
    await add_goal(client, project, type="event", value="/pricing")
    again = await client.post("/v1/goals", json={"type": "page", "value": "/pricing"}, headers=auth(project))
    assert (again.status_code, again.json()["error"]["code"], again.json()["error"]["field"]) == (
        409,
        "goal_exists",
        "value",
    )
    deleted = await client.delete(f"/v1/goals/{pricing['id']}", headers=auth(project))
    assert deleted.status_code == 204
    assert (await client.delete(f"/v1/goals/{pricing['id']}", headers=auth(project))).status_code == 404
    remaining = (await client.get("/v1/goals", headers=auth(project))).json()["goals"]
    assert [(goal["type"], goal["value"]) for goal in remaining] == [("event", "signup"), ("event", "/pricing")]


@pytest.mark.parametrize(
    ("goal", "status", "field"),
    [
        ({"type": "page", "value": "pricing"}, 422, "value"),  # a path starts with /
        ({"type": "page", "value": ""}, 422, "value"),
        ({"type": "visit", "value": "/"}, 422, "type"),
        ({"type": "event", "value": "sign\u0000up"}, 422, "value"),
        ({"type": "event", "value": "signup", "colour": "red"}, 422, None),
    ],
)
async def test_malformed_goals_are_refused(
    client: AsyncTestClient[Any], db: DatabaseHarness, goal: dict[str, Any], status: int, field: str | None
) -> None:
    project = await new_project(db)
    response = await client.post("/v1/goals", json=goal, headers=auth(project))
    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["error"]["field"] == field
    assert (await client.get("/v1/goals", headers=auth(project))).json() == {"goals": []}


async def test_goals_need_the_secret_key(client: AsyncTestClient[Any], db: DatabaseHarness) -> None:
    project = await new_project(db)
    assert (await client.get("/v1/goals")).status_code == 401
    assert (await client.post("/v1/goals", json={"type": "event", "value": "x"})).status_code == 401
    public = {"Authorization": f"Bearer {project['publicKey']}"}
    assert (await client.post("/v1/goals/conversions", json=RANGE, headers=public)).status_code == 401


async def test_a_malformed_goal_id_is_404(client: AsyncTestClient[Any], db: DatabaseHarness) -> None:
    project = await new_project(db)
    response = await client.delete("/v1/goals/not-a-uuid", headers=auth(project))
    assert (response.status_code, response.json()["error"]["code"]) == (404, "goal_not_found")


async def _main_goals(client: AsyncTestClient[Any], project: dict[str, Any]) -> None:
    for kind, value in [
        ("page", "/pricing"),
        ("event", "signup"),
        ("page", "/checkout"),
        ("page", "/old"),
        ("event", "purchase"),
    ]:
        await add_goal(client, project, type=kind, value=value)


async def test_conversions_over_the_range(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    await _main_goals(client, dataset.project)
    body = await conversions(client, dataset.project)
    assert body["visitors"] == 5
    assert figures(body) == [
        ("page", "/pricing", 2, 40.0),
        ("event", "signup", 2, 40.0),
        ("page", "/checkout", 1, 20.0),
        ("page", "/old", 0, 0.0),  # reached only before the range
        ("event", "purchase", 0, 0.0),
    ]
    # Days rolled up give HyperLogLog visitors (exact at these counts), and say so.
    assert body["meta"]["exact"] is (dataset.source == "events")


@pytest.mark.parametrize(
    ("filters", "visitors", "expected"),
    [
        ([{"dimension": "country", "operator": "is", "values": ["FR"]}], 1, [1, 100.0, 100.0, 100.0]),
        ([{"dimension": "referrer", "operator": "is", "values": ["google.com"]}], 2, [2, 100.0, 100.0, 50.0]),
        # Direct visits: v1's second session (/blog) and v5's; neither reached a goal.
        ([{"dimension": "referrer", "operator": "is", "values": [None]}], 2, [0, 0.0, 0.0, 0.0]),
    ],
)
async def test_conversions_follow_the_dashboards_filters(
    client: AsyncTestClient[Any],
    dataset: Dataset,
    filters: list[dict[str, Any]],
    visitors: int,
    expected: list[float],
) -> None:
    await _main_goals(client, dataset.project)
    body = await conversions(client, dataset.project, filters=filters)
    pricing, signup, checkout = body["goals"][:3]
    assert body["visitors"] == visitors
    rates = [pricing["conversion_rate"], signup["conversion_rate"], checkout["conversion_rate"]]
    assert [pricing["visitors"], *rates] == expected


async def test_conversions_without_goals(client: AsyncTestClient[Any], dataset: Dataset) -> None:
    body = await conversions(client, dataset.project)
    assert (body["visitors"], body["goals"]) == (5, [])
