"""Every bad input gets its status code, the JSON error body naming the problem, and stores nothing."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.settings import IngestSettings
from tests.ingest.conftest import GZIP_JSON, JSON, count_rows, gzip_body, json_body, pageview

NOTHING_STORED = {"events": 0, "ingested_events": 0, "replay_chunks": 0, "replay_sessions": 0}


def _batch(project: dict[str, Any], *events: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"projectKey": project["publicKey"], "events": list(events) or [pageview()], **extra}


async def _post_and_check(
    client: AsyncTestClient[Litestar],
    admin_engine: AsyncEngine,
    project: dict[str, Any],
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    field: str | None = None,
    path: str = "/v1/events",
) -> dict[str, Any]:
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error.get("field") == field
    assert await count_rows(admin_engine, project["id"]) == NOTHING_STORED
    return dict(error)


async def test_malformed_json_is_400(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    await _post_and_check(
        client, admin_engine, project, b'{"projectKey": "pk_x", "events": [', JSON, 400, "malformed_json"
    )


async def test_invalid_utf8_is_400(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body(_batch(project)).replace(b"visitor-1", b"visitor-\xff")
    await _post_and_check(client, admin_engine, project, body, JSON, 400, "malformed_json")


@pytest.mark.parametrize(
    "body",
    [
        b"\x1f\x8bnot really gzip",
        gzip.compress(b'{"projectKey": "pk"}')[:-12],  # truncated
    ],
    ids=["garbage", "truncated"],
)
async def test_malformed_gzip_is_400(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine, body: bytes
) -> None:
    await _post_and_check(client, admin_engine, project, body, GZIP_JSON, 400, "malformed_gzip")


async def test_missing_project_key_is_401(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body({"events": [pageview()]})
    await _post_and_check(client, admin_engine, project, body, JSON, 401, "missing_project_key", "projectKey")


async def test_unknown_project_key_is_401(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body({"projectKey": "pk_nobody", "events": [pageview()]})
    await _post_and_check(client, admin_engine, project, body, JSON, 401, "unknown_project_key", "projectKey")


async def test_a_host_outside_the_allowed_domains_is_403_and_the_whole_batch_is_refused(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body(_batch(project, pageview(), pageview(url="https://evil.example.net/"), pageview()))
    await _post_and_check(client, admin_engine, project, body, JSON, 403, "domain_not_allowed", "events[1].url")


async def test_a_lookalike_domain_is_not_a_subdomain(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body(_batch(project, pageview(url="https://notexample.com/")))
    await _post_and_check(client, admin_engine, project, body, JSON, 403, "domain_not_allowed", "events[0].url")


async def test_a_body_over_the_limit_is_413(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    limit = IngestSettings().events.max_body_bytes
    body = json_body(_batch(project, pageview(title="x" * 900)))
    body = body[:-1] + b" " * (limit - len(body) + 10) + b"}"
    await _post_and_check(client, admin_engine, project, body, JSON, 413, "payload_too_large")


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 1 MB of gzip that expands to 1 GiB of zeros, made without holding 1 GiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(1024)]
    parts.append(compressor.flush())
    return b"".join(parts)


async def test_a_gzip_bomb_is_413_with_flat_memory(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine, gzip_bomb: bytes
) -> None:
    assert len(gzip_bomb) < 1_100_000
    limits = IngestSettings().replay
    tracemalloc.start()
    try:
        await _post_and_check(
            client, admin_engine, project, gzip_bomb, GZIP_JSON, 413, "payload_too_large", path="/v1/replay"
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Bounded by the decompressed limit (plus the body and a step), not by the 1 GiB.
    assert peak < limits.max_decompressed_bytes * 2 + len(gzip_bomb) * 2


async def test_a_small_body_that_decompresses_past_the_events_limit_is_413(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    limit = IngestSettings().events.max_decompressed_bytes
    body = gzip.compress(json_body(_batch(project, pageview(title=" " * 10)))[:-1] + b" " * limit + b"}")
    assert len(body) < IngestSettings().events.max_body_bytes
    await _post_and_check(client, admin_engine, project, body, GZIP_JSON, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"content-type": "application/xml"}, "unsupported_media_type"),
        ({"content-type": "multipart/form-data; boundary=x"}, "unsupported_media_type"),
        ({"content-type": "application/json", "content-encoding": "br"}, "unsupported_encoding"),
    ],
)
async def test_unsupported_content_type_or_encoding_is_415(
    client: AsyncTestClient[Litestar],
    project: dict[str, Any],
    admin_engine: AsyncEngine,
    headers: dict[str, str],
    code: str,
) -> None:
    await _post_and_check(client, admin_engine, project, json_body(_batch(project)), headers, 415, code)


@pytest.mark.parametrize(
    ("event_overrides", "code", "field"),
    [
        ({"distinctId": 42}, "invalid_field", "events[1].distinctId"),
        ({"url": None}, "invalid_field", "events[1].url"),
        ({"timestamp": "yesterday"}, "invalid_field", "events[1].timestamp"),
        ({"timestamp": "2026-11-27T10:00:00"}, "invalid_field", "events[1].timestamp"),  # no UTC offset
        ({"url": "https://example.com/" + "a" * 3000}, "invalid_field", "events[1].url"),
        ({"event": ""}, "invalid_field", "events[1].event"),
        ({"properties": {f"p{n}": n for n in range(51)}}, "invalid_field", "events[1].properties"),
        ({"properties": {"nested": {"deeper": {"deepest": 1}}}}, "invalid_field", "events[1].properties"),
        ({"properties": {"k": "v" * 1001}}, "invalid_field", "events[1].properties"),
        ({"uuid": "not-a-uuid"}, "invalid_field", "events[1].uuid"),
        ({"url": "ftp://example.com/file"}, "invalid_url", "events[1].url"),
        ({"url": "/relative/path"}, "invalid_url", "events[1].url"),
    ],
)
async def test_schema_violations_are_422_naming_the_field(
    client: AsyncTestClient[Litestar],
    project: dict[str, Any],
    admin_engine: AsyncEngine,
    event_overrides: dict[str, Any],
    code: str,
    field: str,
) -> None:
    # The offending event is the second one: a good first event must not be stored either.
    body = json_body(_batch(project, pageview(), pageview(**event_overrides)))
    await _post_and_check(client, admin_engine, project, body, JSON, 422, code, field)


async def test_too_many_events_is_422(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body(_batch(project, *[pageview() for _ in range(501)]))
    await _post_and_check(client, admin_engine, project, body, JSON, 422, "too_many_events", "events")


@pytest.mark.parametrize(
    ("event_overrides", "field"),
    [
        ({"event": "sign\u0000up"}, "events[0].event"),
        ({"properties": {"bad\u0000key": 1}}, "events[0].properties.bad\u0000key"),
        ({"properties": {"key": "bad\u0000value"}}, "events[0].properties.key"),
    ],
)
async def test_nul_characters_are_422(
    client: AsyncTestClient[Litestar],
    project: dict[str, Any],
    admin_engine: AsyncEngine,
    event_overrides: dict[str, Any],
    field: str,
) -> None:
    body = json_body(_batch(project, pageview(**event_overrides)))
    await _post_and_check(client, admin_engine, project, body, JSON, 422, "nul_character", field)


async def test_an_event_older_than_the_window_is_422(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = json_body(_batch(project, pageview(), pageview(timestamp="2001-01-01T00:00:00Z")))
    await _post_and_check(client, admin_engine, project, body, JSON, 422, "timestamp_too_old", "events[1].timestamp")


async def test_a_literal_backslash_u0000_text_is_not_a_nul(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    # The six characters \u0000 (an escaped backslash) are ordinary text.
    body = json_body(_batch(project, pageview(title="\\u0000")))
    response = await client.post("/v1/events", content=body, headers=JSON)
    assert response.status_code == 202
    assert (await count_rows(admin_engine, project["id"]))["events"] == 1


async def test_gzip_of_the_same_body_gets_the_same_errors(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    body = gzip_body(_batch(project, pageview(distinctId=7)))
    await _post_and_check(client, admin_engine, project, body, GZIP_JSON, 422, "invalid_field", "events[0].distinctId")
