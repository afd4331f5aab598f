"""POST /v1/replay: chunks stored as sent, sessions summarised at ingest."""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.ingest.conftest import GZIP_JSON, JSON, count_rows, gzip_body, json_body

BASE_MS = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)


def meta(at: int, href: str) -> dict[str, Any]:
    return {"type": 4, "timestamp": BASE_MS + at, "data": {"href": href, "width": 1280, "height": 800}}


def full_snapshot(at: int) -> dict[str, Any]:
    node = {"type": 0, "childNodes": [{"type": 2, "tagName": "html", "attributes": {}, "childNodes": []}], "id": 1}
    return {"type": 2, "timestamp": BASE_MS + at, "data": {"node": node, "initialOffset": {"top": 0, "left": 0}}}


def mouse_move(at: int) -> dict[str, Any]:
    return {"type": 3, "timestamp": BASE_MS + at, "data": {"source": 1, "positions": [{"x": 1, "y": 2, "id": 5}]}}


def click(at: int) -> dict[str, Any]:
    return {"type": 3, "timestamp": BASE_MS + at, "data": {"source": 2, "type": 2, "id": 7, "x": 10, "y": 20}}


def mutation(at: int) -> dict[str, Any]:
    return {"type": 3, "timestamp": BASE_MS + at, "data": {"source": 0, "adds": [], "removes": [], "texts": []}}


def chunk(project: dict[str, Any], seq: int, events: list[dict[str, Any]], session: str = "s-1") -> dict[str, Any]:
    return {
        "projectKey": project["publicKey"],
        "sessionId": session,
        "distinctId": "visitor-1",
        "seq": seq,
        "events": events,
    }


async def _session(admin_engine: AsyncEngine, project_id: int, session_id: str = "s-1") -> Any:
    async with admin_engine.connect() as connection:
        result = await connection.execute(
            text("SELECT * FROM replay_sessions WHERE project_id = :p AND session_id = :s"),
            {"p": project_id, "s": session_id},
        )
        return result.one()


async def _chunks(admin_engine: AsyncEngine, project_id: int) -> list[Any]:
    async with admin_engine.connect() as connection:
        result = await connection.execute(
            text("SELECT * FROM replay_chunks WHERE project_id = :p ORDER BY session_id, seq"), {"p": project_id}
        )
        return list(result)


async def test_a_chunk_is_stored_as_sent_and_summarised(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    events = [
        meta(0, "https://example.com/pricing"),
        full_snapshot(5),
        mouse_move(1_000),
        mouse_move(2_000),  # +1000 active
        click(3_000),  # +1000 active, 1 click
        mutation(4_000),  # not user activity
        mouse_move(20_000),  # 17 s idle: not active time
        click(21_500),  # +1500 active, 1 click
    ]
    body = gzip_body(chunk(project, 0, events))

    response = await client.post("/v1/replay", content=body, headers=GZIP_JSON)

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 8}
    [stored] = await _chunks(admin_engine, project["id"])
    assert bytes(stored.data) == body  # the gzip bytes exactly as sent
    assert (stored.content_encoding, stored.byte_size) == ("gzip", len(body))
    assert (stored.seq, stored.event_count, stored.has_full_snapshot) == (0, 8, True)
    assert stored.first_timestamp == datetime.fromtimestamp(BASE_MS / 1000, UTC)
    assert stored.last_timestamp == datetime.fromtimestamp((BASE_MS + 21_500) / 1000, UTC)

    session = await _session(admin_engine, project["id"])
    # A session of a single batch is listed with its real duration.
    assert session.duration_ms == 21_500
    assert (session.active_ms, session.click_count, session.page_count) == (3_500, 2, 1)
    assert session.first_url == "https://example.com/pricing"
    assert (session.chunk_count, session.total_bytes) == (1, len(body))
    assert (session.distinct_id, session.browser, session.os, session.device_type) == (
        "visitor-1",
        "Chrome",
        "Windows",
        "desktop",
    )


async def test_chunks_out_of_order_and_retried_sum_up_once(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    first = chunk(project, 0, [meta(0, "https://example.com/"), full_snapshot(1), click(2_000)])
    second = chunk(project, 1, [click(6_000), meta(7_000, "https://example.com/docs"), full_snapshot(7_001)])
    third = chunk(project, 2, [mouse_move(11_000), mouse_move(12_000)])
    # Arrival order 2, 0, 1, and chunk 1 twice (a retry), partly concurrently.
    responses = [await client.post("/v1/replay", content=gzip_body(third), headers=GZIP_JSON)]
    responses += await asyncio.gather(
        client.post("/v1/replay", content=gzip_body(first), headers=GZIP_JSON),
        client.post("/v1/replay", content=gzip_body(second), headers=GZIP_JSON),
        client.post("/v1/replay", content=gzip_body(second), headers=GZIP_JSON),
    )
    assert [r.status_code for r in responses] == [202] * 4

    assert [c.seq for c in await _chunks(admin_engine, project["id"])] == [0, 1, 2]
    session = await _session(admin_engine, project["id"])
    assert session.duration_ms == 12_000
    assert session.first_url == "https://example.com/"  # from the earliest chunk, though it came later
    assert (session.click_count, session.page_count, session.chunk_count) == (2, 2, 3)
    assert session.active_ms == 1_000  # only the two mouse moves 1 s apart, within chunk 2
    assert session.total_bytes == sum(len(gzip_body(c)) for c in (first, second, third))


async def test_each_chunk_keeps_the_distinct_id_it_was_sent_under(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    """The session keeps its first id; erasure of the later id finds the later chunk by its own."""
    anonymous = chunk(project, 0, [meta(0, "https://example.com/"), full_snapshot(1)])
    identified = {**chunk(project, 1, [click(2_000)]), "distinctId": "user-42"}
    for body in (anonymous, identified):
        response = await client.post("/v1/replay", content=gzip_body(body), headers=GZIP_JSON)
        assert response.status_code == 202, response.text

    assert [(c.seq, c.distinct_id) for c in await _chunks(admin_engine, project["id"])] == [
        (0, "visitor-1"),
        (1, "user-42"),
    ]
    assert (await _session(admin_engine, project["id"])).distinct_id == "visitor-1"


async def test_an_uncompressed_chunk_is_stored_as_identity(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body(chunk(project, 0, [full_snapshot(0), click(500)]))
    response = await client.post("/v1/replay", content=body, headers=JSON)
    assert response.status_code == 202
    [stored] = await _chunks(admin_engine, project["id"])
    assert (stored.content_encoding, bytes(stored.data)) == ("identity", body)
    assert gzip.compress(body) != body


@pytest.mark.parametrize(
    ("mutate", "status", "code", "field"),
    [
        (lambda c: c.update(seq=-1), 422, "invalid_field", "seq"),
        (lambda c: c.update(seq=2**40), 422, "invalid_field", "seq"),
        (lambda c: c.update(events=[]), 422, "invalid_field", "events"),
        (
            lambda c: c.update(events=[{"type": 9, "timestamp": BASE_MS, "data": {}}]),
            422,
            "invalid_field",
            "events[0].type",
        ),
        (lambda c: c.update(events=[{"type": 2, "data": {}}]), 422, "invalid_field", "events[0].timestamp"),
        (lambda c: c.update(events=[full_snapshot(0) | {"timestamp": 1}]), 422, "timestamp_out_of_range", "events"),
        (lambda c: c.update(sessionId="s" * 201), 422, "invalid_field", "sessionId"),
        (lambda c: c.update(projectKey="pk_unknown"), 401, "unknown_project_key", "projectKey"),
        (lambda c: c.update(events=[meta(0, "https://evil.example.net/")]), 403, "domain_not_allowed", None),
    ],
)
async def test_bad_chunks_are_refused_and_nothing_is_stored(
    client: AsyncTestClient[Litestar],
    project: dict[str, Any],
    admin_engine: AsyncEngine,
    mutate: Any,
    status: int,
    code: str,
    field: str | None,
) -> None:
    body = chunk(project, 0, [full_snapshot(0)])
    mutate(body)
    response = await client.post("/v1/replay", content=gzip_body(body), headers=GZIP_JSON)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"].get("field") == field
    counts = await count_rows(admin_engine, project["id"])
    assert (counts["replay_chunks"], counts["replay_sessions"]) == (0, 0)


async def test_the_origin_header_must_be_an_allowed_domain(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = gzip_body(chunk(project, 0, [full_snapshot(0)]))
    refused = await client.post("/v1/replay", content=body, headers={**GZIP_JSON, "origin": "https://evil.example.net"})
    allowed = await client.post("/v1/replay", content=body, headers={**GZIP_JSON, "origin": "https://www.example.com"})
    assert (refused.status_code, allowed.status_code) == (403, 202)
