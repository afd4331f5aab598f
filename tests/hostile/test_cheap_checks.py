"""Cheap checks before expensive work: the key (and its rate limit) before decompression when the
URL names it, before decoding when only the body does; events counted, NULs looked for, on raw bytes."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from services.ingest.app import create_app
from services.ingest.decoding import RATIO_FREE_BYTES, gunzip_bounded
from services.ingest.settings import IngestSettings
from tests.harness import DatabaseHarness
from tests.hostile.conftest import assert_error
from tests.ingest.conftest import GZIP_JSON, JSON, json_body, pageview
from tests.ingest.test_replay import chunk, full_snapshot, meta, mouse_move
from tools.loadtest.payloads import RECORDINGS_DIR, build_pools, load_recordings

NOT_GZIP = b"this is not gzip at all"
UNKNOWN_KEY = "pk_nobodyhasthiskey0000"


@pytest.fixture
async def client(db: DatabaseHarness) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(db.database, settings=IngestSettings())) as test_client:
        yield test_client


def batch(key: str) -> bytes:
    return json_body({"projectKey": key, "events": [pageview()]})


async def test_a_key_in_the_url_is_checked_before_the_body_is_decompressed(
    client: AsyncTestClient[Litestar], project: dict[str, Any]
) -> None:
    # The body is not even gzip: an unknown key is refused before anyone looks.
    unknown = await client.post(f"/v1/events?key={UNKNOWN_KEY}", content=NOT_GZIP, headers=GZIP_JSON)
    assert_error(unknown, 401, "unknown_project_key", "projectKey")
    not_a_key = await client.post("/v1/replay?key=" + "x" * 5000, content=NOT_GZIP, headers=GZIP_JSON)
    assert_error(not_a_key, 401, "unknown_project_key", "projectKey")
    # With a real key, the body is read as usual (here: refused for what it is).
    known = await client.post(f"/v1/events?key={project['publicKey']}", content=NOT_GZIP, headers=GZIP_JSON)
    assert_error(known, 400, "malformed_gzip")


async def test_the_url_key_and_the_body_key_must_agree(
    client: AsyncTestClient[Litestar], project: dict[str, Any], other_project: dict[str, Any]
) -> None:
    mismatch = await client.post(
        f"/v1/events?key={other_project['publicKey']}", content=batch(project["publicKey"]), headers=JSON
    )
    assert_error(mismatch, 401, "project_key_mismatch", "projectKey")
    agreed = await client.post(
        f"/v1/events?key={project['publicKey']}", content=gzip.compress(batch(project["publicKey"])), headers=GZIP_JSON
    )
    assert agreed.status_code == 202, agreed.text
    assert agreed.json() == {"accepted": 1}
    # The body-only contract still works.
    body_only = await client.post("/v1/events", content=batch(project["publicKey"]), headers=JSON)
    assert body_only.status_code == 202, body_only.text


async def test_a_project_over_its_limit_is_refused_before_its_body_is_decompressed(
    db: DatabaseHarness, project: dict[str, Any]
) -> None:
    settings = IngestSettings(rate_limit_requests_per_s=0.01, rate_limit_burst=1)
    async with AsyncTestClient(create_app(db.database, settings=settings)) as client:
        first = await client.post(
            f"/v1/events?key={project['publicKey']}",
            content=gzip.compress(batch(project["publicKey"])),
            headers=GZIP_JSON,
        )
        second = await client.post(f"/v1/events?key={project['publicKey']}", content=NOT_GZIP, headers=GZIP_JSON)
    assert first.status_code == 202, first.text
    assert_error(second, 429, "rate_limited")


async def test_a_body_only_request_has_its_key_checked_before_its_events_are_decoded(
    client: AsyncTestClient[Litestar],
) -> None:
    # The events are nonsense for the contract, but the key is looked at first.
    body = json_body({"projectKey": UNKNOWN_KEY, "events": [{"nonsense": True}] * 3})
    assert_error(await client.post("/v1/events", content=body, headers=JSON), 401, "unknown_project_key", "projectKey")


def rrweb_chunk_bytes(key: str, events: bytes) -> bytes:
    return b'{"projectKey":"' + key.encode() + b'","sessionId":"s","distinctId":"d","seq":0,"events":[' + events + b"]}"


# What a bomb may make ingest inflate, computed by hand: steps of 64 KiB, refused at the first
# step whose output passes 256 KiB + 32 x the compressed bytes read. A bomb of tiny rrweb events
# (~400x) or of zeros (~1000x) has read under 2 KiB by its fifth step (320 KiB), which is refused:
# 327,680 bytes, however large the bomb would have grown (~29 MB, or 1 GiB).
BOMB_REFUSED_AFTER = 5 * 64 * 1024


def refused_after(message: str) -> tuple[int, int]:
    """(bytes inflated, compressed bytes read) from a ratio refusal's message."""
    inflated, _, rest = message.rpartition(": ")[2].partition(" bytes from its first ")
    return int(inflated), int(rest.removesuffix(" bytes."))


def tiny_rrweb_bomb(key: str) -> bytes:
    # ~80 KiB of gzip that would inflate to ~29 MB of tiny rrweb events.
    body = gzip.compress(rrweb_chunk_bytes(key, b",".join([b'{"type":3,"timestamp":1}'] * 1_200_000)))
    assert len(body) < 120_000
    return body


async def test_a_bomb_of_tiny_rrweb_events_is_refused_after_a_bounded_amount_of_inflating(
    client: AsyncTestClient[Litestar], project: dict[str, Any]
) -> None:
    # A valid key in the body only: the most a key holder can make ingest read before refusing.
    response = await client.post("/v1/replay", content=tiny_rrweb_bomb(project["publicKey"]), headers=GZIP_JSON)
    error = assert_error(response, 413, "payload_too_large")
    inflated, read = refused_after(error["message"])
    assert inflated == BOMB_REFUSED_AFTER
    assert read < 2048
    assert error["message"].startswith("The body inflates more than 32 times its compressed size past the first ")


def zeros_bomb(megabytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(bytes(1024 * 1024)) for _ in range(megabytes)]
    return b"".join([*parts, compressor.flush()])


async def test_a_bomb_on_the_events_path_is_refused_the_same_way(
    client: AsyncTestClient[Litestar], project: dict[str, Any]
) -> None:
    # 64 MiB of zeros in ~64 KiB of gzip (over the threaded size), and a small one (inflated on
    # the event loop), with the key in the URL and without.
    for body in (zeros_bomb(64), zeros_bomb(1)):
        for url in (f"/v1/events?key={project['publicKey']}", "/v1/events"):
            error = assert_error(await client.post(url, content=body, headers=GZIP_JSON), 413, "payload_too_large")
            assert refused_after(error["message"])[0] == BOMB_REFUSED_AFTER


async def test_honest_requests_are_answered_while_bombs_are_refused(
    client: AsyncTestClient[Litestar], project: dict[str, Any]
) -> None:
    bomb = tiny_rrweb_bomb(project["publicKey"])
    honest = [
        gzip.compress(json_body(chunk(project, seq, [meta(seq, "https://example.com/"), full_snapshot(seq + 1)])))
        for seq in range(4)
    ]
    answers = await asyncio.gather(
        *(client.post("/v1/replay", content=bomb, headers=GZIP_JSON) for _ in range(8)),
        *(client.post("/v1/replay", content=body, headers=GZIP_JSON) for body in honest),
    )
    for answer in answers[:8]:
        error = assert_error(answer, 413, "payload_too_large")
        assert refused_after(error["message"])[0] == BOMB_REFUSED_AFTER
    for answer in answers[8:]:
        assert answer.status_code == 202, answer.text


def test_honest_bodies_inflate_well_within_the_ratio() -> None:
    # The tracker's recorded chunks and the load test's generated payloads, gzipped as the
    # tracker does (level 6): the ratio must let every one through, with room to spare.
    pools = build_pools("pk_ratio", recordings_dir=RECORDINGS_DIR)
    bodies = [
        json_body({"projectKey": "pk_ratio", "sessionId": "s", "distinctId": "d", "seq": seq, "events": events})
        for recording in load_recordings()
        for seq, events in enumerate(recording.chunks)
    ]
    bodies += [
        b"".join(segment if not segment.startswith(b"@") else b"0" * 36 for segment in template)
        for template in pools.event_batches
    ]
    assert len(bodies) > 40
    for body in bodies:
        assert len(body) < 10 * len(gzip.compress(body, 6)) or len(body) < RATIO_FREE_BYTES
        assert gunzip_bounded(gzip.compress(body, 6), 32 * 1024 * 1024) == body
    for member in (*pools.first_chunks, *pools.incremental_chunks):
        assert gunzip_bounded(member.gzip, 32 * 1024 * 1024) == gzip.decompress(member.gzip)


async def test_too_many_events_are_counted_before_they_are_decoded(
    client: AsyncTestClient[Litestar], project: dict[str, Any]
) -> None:
    # 6,001 rrweb events (the limit is 5,000) whose timestamps differ: an ordinary gzip ratio.
    events = b",".join(b'{"type":3,"timestamp":%d}' % (1_700_000_000_000 + n * 7919) for n in range(6_001))
    response = await client.post(
        "/v1/replay", content=gzip.compress(rrweb_chunk_bytes(project["publicKey"], events)), headers=GZIP_JSON
    )
    error = assert_error(response, 422, "too_many_events", "events")
    assert error["message"] == "A body may hold at most 5000 events."
    over = json_body({"projectKey": project["publicKey"], "events": [pageview()] * 501})
    assert_error(await client.post("/v1/events", content=over, headers=JSON), 422, "too_many_events", "events")


async def test_a_nul_in_an_ignored_rrweb_field_is_kept_and_one_in_a_read_field_is_named(
    client: AsyncTestClient[Litestar], project: dict[str, Any]
) -> None:
    text_with_nul = {"type": 3, "timestamp": mouse_move(10)["timestamp"], "data": {"source": 0, "texts": ["a\u0000b"]}}
    events = [meta(0, "https://example.com/"), full_snapshot(1), text_with_nul, mouse_move(20)]
    kept = await client.post(
        "/v1/replay", content=gzip.compress(json_body(chunk(project, 0, events))), headers=GZIP_JSON
    )
    assert kept.status_code == 202, kept.text
    assert kept.json() == {"accepted": 4}

    events[3] = meta(30, "https://example.com/\u0000")
    named = await client.post("/v1/replay", content=json_body(chunk(project, 1, events)), headers=JSON)
    assert_error(named, 422, "nul_character", "events[3].data.href")

    pageviews = [pageview(), pageview(title="a\u0000b")]
    body = json_body({"projectKey": project["publicKey"], "events": pageviews})
    assert_error(await client.post("/v1/events", content=body, headers=JSON), 422, "nul_character", "events[1].title")
