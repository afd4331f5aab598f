"""Every bad input gets its status code, the JSON error body naming the problem, and stores nothing."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from dataclasses import dataclass
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


@dataclass
class IngestUnderTest:
    client: AsyncTestClient[Litestar]
    admin_engine: AsyncEngine
    project: dict[str, Any]

    async def refuses(
        self,
        body: bytes,
        headers: dict[str, str],
        status: int,
        code: str,
        field: str | None = None,
        path: str = "/v1/events",
    ) -> dict[str, Any]:
        """The body is answered with this status and error, and nothing of it is stored."""
        response = await self.client.post(path, content=body, headers=headers)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code
        assert error["message"]
        assert error.get("field") == field
        assert await count_rows(self.admin_engine, self.project["id"]) == NOTHING_STORED
        return dict(error)


@pytest.fixture
def ingest(client: AsyncTestClient[Litestar], admin_engine: AsyncEngine, project: dict[str, Any]) -> IngestUnderTest:
    return IngestUnderTest(client, admin_engine, project)


async def test_malformed_json_is_400(ingest: IngestUnderTest) -> None:
    await ingest.refuses(b'{"projectKey": "pk_x", "events": [', JSON, 400, "malformed_json")


async def test_invalid_utf8_is_400(ingest: IngestUnderTest) -> None:
    body = json_body(_batch(ingest.project)).replace(b"visitor-1", b"visitor-\xff")
    await ingest.refuses(body, JSON, 400, "malformed_json")


@pytest.mark.parametrize(
    "body",
    [
        b"\x1f\x8bnot really gzip",
        gzip.compress(b'{"projectKey": "pk"}')[:-12],  # truncated
    ],
    ids=["garbage", "truncated"],
)
async def test_malformed_gzip_is_400(ingest: IngestUnderTest, body: bytes) -> None:
    await ingest.refuses(body, GZIP_JSON, 400, "malformed_gzip")


async def test_missing_project_key_is_401(ingest: IngestUnderTest) -> None:
    body = json_body({"events": [pageview()]})
    await ingest.refuses(body, JSON, 401, "missing_project_key", "projectKey")


async def test_unknown_project_key_is_401(ingest: IngestUnderTest) -> None:
    body = json_body({"projectKey": "pk_nobody", "events": [pageview()]})
    await ingest.refuses(body, JSON, 401, "unknown_project_key", "projectKey")


async def test_a_host_outside_the_allowed_domains_is_403_and_the_whole_batch_is_refused(
    ingest: IngestUnderTest,
) -> None:
    body = json_body(_batch(ingest.project, pageview(), pageview(url="https://evil.example.net/"), pageview()))
    await ingest.refuses(body, JSON, 403, "domain_not_allowed", "events[1].url")


async def test_a_lookalike_domain_is_not_a_subdomain(ingest: IngestUnderTest) -> None:
    body = json_body(_batch(ingest.project, pageview(url="https://notexample.com/")))
    await ingest.refuses(body, JSON, 403, "domain_not_allowed", "events[0].url")


async def test_a_body_over_the_limit_is_413(ingest: IngestUnderTest) -> None:
    limit = IngestSettings().events.max_body_bytes
    body = json_body(_batch(ingest.project, pageview(title="x" * 900)))
    body = body[:-1] + b" " * (limit - len(body) + 10) + b"}"
    await ingest.refuses(body, JSON, 413, "payload_too_large")


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 1 MB of gzip that expands to 1 GiB of zeros, made without holding 1 GiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(1024)]
    parts.append(compressor.flush())
    return b"".join(parts)


async def test_a_gzip_bomb_is_413_with_flat_memory(ingest: IngestUnderTest, gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 1_100_000
    limits = IngestSettings().replay
    tracemalloc.start()
    try:
        await ingest.refuses(gzip_bomb, GZIP_JSON, 413, "payload_too_large", path="/v1/replay")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Bounded by the decompressed limit (plus the body and a step), not by the 1 GiB.
    assert peak < limits.max_decompressed_bytes * 2 + len(gzip_bomb) * 2


async def test_a_small_body_that_decompresses_past_the_events_limit_is_413(ingest: IngestUnderTest) -> None:
    limit = IngestSettings().events.max_decompressed_bytes
    body = gzip.compress(json_body(_batch(ingest.project, pageview(title=" " * 10)))[:-1] + b" " * limit + b"}")
    assert len(body) < IngestSettings().events.max_body_bytes
    await ingest.refuses(body, GZIP_JSON, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"content-type": "application/xml"}, "unsupported_media_type"),
        ({"content-type": "multipart/form-data; boundary=x"}, "unsupported_media_type"),
        ({"content-type": "application/json", "content-encoding": "br"}, "unsupported_encoding"),
    ],
)
async def test_unsupported_content_type_or_encoding_is_415(
    ingest: IngestUnderTest,
    headers: dict[str, str],
    code: str,
) -> None:
    await ingest.refuses(json_body(_batch(ingest.project)), headers, 415, code)


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
    ingest: IngestUnderTest,
    event_overrides: dict[str, Any],
    code: str,
    field: str,
) -> None:
    # The offending event is the second one: a good first event must not be stored either.
    body = json_body(_batch(ingest.project, pageview(), pageview(**event_overrides)))
    await ingest.refuses(body, JSON, 422, code, field)


async def test_too_many_events_is_422(ingest: IngestUnderTest) -> None:
    body = json_body(_batch(ingest.project, *[pageview() for _ in range(501)]))
    await ingest.refuses(body, JSON, 422, "too_many_events", "events")


@pytest.mark.parametrize(
    ("event_overrides", "field"),
    [
        ({"event": "sign\u0000up"}, "events[0].event"),
        ({"properties": {"bad\u0000key": 1}}, "events[0].properties.bad\u0000key"),
        ({"properties": {"key": "bad\u0000value"}}, "events[0].properties.key"),
    ],
)
async def test_nul_characters_are_422(
    ingest: IngestUnderTest,
    event_overrides: dict[str, Any],
    field: str,
) -> None:
    body = json_body(_batch(ingest.project, pageview(**event_overrides)))
    await ingest.refuses(body, JSON, 422, "nul_character", field)


async def test_an_event_older_than_the_window_is_422(ingest: IngestUnderTest) -> None:
    body = json_body(_batch(ingest.project, pageview(), pageview(timestamp="2001-01-01T00:00:00Z")))
    await ingest.refuses(body, JSON, 422, "timestamp_too_old", "events[1].timestamp")


async def test_a_literal_backslash_u0000_text_is_not_a_nul(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    # The six characters \u0000 (an escaped backslash) are ordinary text.
    body = json_body(_batch(project, pageview(title="\\u0000")))
    response = await client.post("/v1/events", content=body, headers=JSON)
    assert response.status_code == 202
    assert (await count_rows(admin_engine, project["id"]))["events"] == 1


async def test_gzip_of_the_same_body_gets_the_same_errors(ingest: IngestUnderTest) -> None:
    body = gzip_body(_batch(ingest.project, pageview(distinctId=7)))
    await ingest.refuses(body, GZIP_JSON, 422, "invalid_field", "events[0].distinctId")
