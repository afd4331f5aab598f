"""The replay API is documented at /schema, recording formats included."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from services.replay.app import create_app
from tests.harness import DatabaseHarness


async def test_replay_routes_and_their_errors_are_in_the_openapi_document(db: DatabaseHarness) -> None:
    async with AsyncTestClient(create_app(db.database)) as client:
        document: dict[str, Any] = (await client.get("/schema/openapi.json")).json()
    paths = document["paths"]
    assert {
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/recording",
        "/v1/persons/{distinct_id}",
    } <= set(paths)
    recording = paths["/v1/sessions/{session_id}/recording"]["get"]
    assert {"401", "404", "422"} <= set(recording["responses"])
    assert "application/x-ndjson" in recording["description"]
    assert "application/vnd.sightline.replay-chunks" in recording["description"]
    assert {parameter["name"] for parameter in recording["parameters"]} >= {"from", "to"}
    listing = paths["/v1/sessions"]["get"]
    assert {parameter["name"] for parameter in listing["parameters"]} >= {
        "cursor",
        "limit",
        "dateFrom",
        "dateTo",
        "minDurationMs",
        "distinctId",
        "urlContains",
        "country",
        "browser",
        "device",
    }
    assert set(paths["/v1/persons/{distinct_id}"]) == {"delete"}
