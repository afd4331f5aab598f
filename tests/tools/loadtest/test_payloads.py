"""The load test's payloads: recorded first chunks, sizes like the seed's, valid against the tracker contract,
stored by real ingest."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.app import create_app
from services.ingest.decoding import decode_json, gunzip_bounded
from services.ingest.schemas import EventBatch, ReplayChunkBody
from services.ingest.settings import IngestSettings
from tests.harness import DatabaseHarness
from tools.loadtest import payloads
from tools.loadtest.check import stored_rows

HEADERS = {
    "content-type": "application/json",
    "content-encoding": "gzip",
    "user-agent": payloads.USER_AGENTS[0],
    "origin": "https://example.com",
}


STARTED_MS = 1_795_000_000_000


@pytest.fixture(scope="module")
def pools() -> payloads.PayloadPools:
    return payloads.build_pools(
        "pk_placeholder", seed=11, first_chunks=6, incremental_chunks=6, event_batches=4, started_ms=STARTED_MS
    )


@pytest.fixture(scope="module")
def synthetic_pools(tmp_path_factory: pytest.TempPathFactory) -> payloads.PayloadPools:
    # Without recordings (an empty directory) the first chunks are synthetic.
    return payloads.build_pools(
        "pk_placeholder",
        seed=11,
        first_chunks=6,
        incremental_chunks=6,
        event_batches=4,
        recordings_dir=tmp_path_factory.mktemp("no-recordings"),
    )


def recorded_events(name: str) -> list[dict[str, Any]]:
    captured = json.loads(gzip.decompress((payloads.RECORDINGS_DIR / f"{name}.json.gz").read_bytes()))
    events: list[dict[str, Any]] = captured["chunks"][0]["events"]
    return events


def test_first_chunks_are_the_recorded_sessions_first_chunks_shifted_to_now(pools: payloads.PayloadPools) -> None:
    assert pools.first_chunk_source == "recordings: article, catalogue, dashboard"
    assert len(pools.first_chunks) == 3
    for member, name in zip(pools.first_chunks, ["article", "catalogue", "dashboard"], strict=True):
        sent = json.loads(gzip.decompress(member.gzip))
        recorded = recorded_events(name)
        # Every event of the recorded first chunk, as recorded, but for the time and the site.
        assert member.rrweb_events == len(recorded) == len(sent)
        shift = STARTED_MS - recorded[0]["timestamp"]
        assert [event["timestamp"] for event in sent] == [event["timestamp"] + shift for event in recorded]
        assert sent[0]["data"]["href"] == "https://example.com/"
        assert recorded[0]["data"]["href"].startswith("http://127.0.0.1:")
        assert sent[1:] == [{**event, "timestamp": event["timestamp"] + shift} for event in recorded[1:]]


@pytest.mark.parametrize("which", ["recorded", "synthetic"])
def test_first_chunks_are_15_to_60_kb_of_gzip_starting_with_meta_and_full_snapshot(
    pools: payloads.PayloadPools, synthetic_pools: payloads.PayloadPools, which: str
) -> None:
    chosen = pools if which == "recorded" else synthetic_pools
    assert (chosen.first_chunk_source == "synthetic") == (which == "synthetic")
    visitor = payloads.VisitorIdentity("pk_placeholder")
    for variant in range(len(chosen.first_chunks)):
        request = payloads.tracker_request(chosen, visitor, 0, variant)
        assert request.path == "/v1/replay"
        assert payloads.FIRST_CHUNK_MIN_BYTES <= len(request.body) <= payloads.FIRST_CHUNK_MAX_BYTES
        chunk = decode_json(gunzip_bounded(request.body, 32 * 1024 * 1024), ReplayChunkBody)
        assert chunk.seq == 0
        assert [event.type for event in chunk.events][:2] == [payloads.META, payloads.FULL_SNAPSHOT]
        assert chunk.events[0].data.href is not None
        assert chunk.events[0].data.href.startswith("https://example.com/")


def test_a_recording_too_large_is_cut_and_one_too_small_takes_its_next_events() -> None:
    recording = payloads.load_recordings()[0]
    whole = len(recording.chunks[0])
    size = len(payloads.gzip_member(msgspec.json.encode(recording.chunks[0])))
    cut = payloads.recorded_first_chunk_events(recording, STARTED_MS, min_bytes=1_000, max_bytes=size - 1)
    assert cut is not None
    assert 2 <= len(cut) < whole
    assert [event["type"] for event in cut[:2]] == [payloads.META, payloads.FULL_SNAPSHOT]
    padded = payloads.recorded_first_chunk_events(recording, STARTED_MS, min_bytes=size + 1, max_bytes=10**6)
    assert padded is not None
    assert len(padded) == whole + 1
    assert (
        padded[whole]["timestamp"] - STARTED_MS
        == recording.chunks[1][0]["timestamp"] - recording.chunks[0][0]["timestamp"]
    )
    everything = sum(len(chunk) for chunk in recording.chunks)
    assert payloads.recorded_first_chunk_events(recording, STARTED_MS, min_bytes=10**7, max_bytes=10**8) is None
    assert everything > whole


def test_full_snapshot_is_a_nested_dom_with_text_and_attributes(
    pools: payloads.PayloadPools, synthetic_pools: payloads.PayloadPools
) -> None:
    for member in (*pools.first_chunks, synthetic_pools.first_chunks[0]):
        events = json.loads(gzip.decompress(member.gzip))
        document = events[1]["data"]["node"]

        def walk(node: dict[str, Any], depth: int) -> tuple[int, int, int]:
            """(deepest level, text nodes, elements with attributes)"""
            deepest = depth
            texts, attributed = int(node["type"] == payloads.NODE_TEXT), int(bool(node.get("attributes")))
            for child in node.get("childNodes", []):
                child_deepest, child_texts, child_attributed = walk(child, depth + 1)
                deepest = max(deepest, child_deepest)
                texts, attributed = texts + child_texts, attributed + child_attributed
            return deepest, texts, attributed

        deepest, texts, attributed = walk(document, 0)
        assert deepest >= 6
        assert texts >= 50
        assert attributed >= 50


def test_later_requests_alternate_events_and_replay_with_increasing_seq(pools: payloads.PayloadPools) -> None:
    visitor = payloads.VisitorIdentity("pk_placeholder")
    requests = [payloads.tracker_request(pools, visitor, seq, 3) for seq in range(1, 7)]
    assert [request.path for request in requests] == ["/v1/events", "/v1/replay"] * 3
    replay_seqs = [
        decode_json(gzip.decompress(request.body), ReplayChunkBody).seq
        for request in requests
        if request.path == "/v1/replay"
    ]
    assert replay_seqs == [1, 2, 3]
    for request in requests:
        # ~3 kB: replay chunks on the wire, event batches as JSON (as in `make bench-ingest`).
        size = len(request.body) if request.path == "/v1/replay" else len(gzip.decompress(request.body))
        assert 2_500 <= size <= 4_500, (request.path, size)


def test_event_batches_carry_fresh_uuids_and_the_visitors_ids(pools: payloads.PayloadPools) -> None:
    visitor = payloads.VisitorIdentity("pk_placeholder")
    batches = [decode_json(gzip.decompress(payloads.events_body(visitor, pools.event_batches[0])), EventBatch)]
    batches.append(decode_json(gzip.decompress(payloads.events_body(visitor, pools.event_batches[0])), EventBatch))
    uuids = [event.uuid for batch in batches for event in batch.events]
    assert len(uuids) == 2 * payloads.EVENTS_PER_BATCH
    assert len(set(uuids)) == len(uuids)
    assert all(isinstance(value, uuid.UUID) for value in uuids)
    assert {(event.distinct_id, event.session_id) for batch in batches for event in batch.events} == {
        (visitor.distinct_id, visitor.session_id)
    }
    assert batches[0].events[0].event == "pageview"


@pytest.fixture
async def ingest(db: DatabaseHarness) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(db.database, settings=IngestSettings(benchmark_noop=True))) as client:
        yield client


async def test_real_ingest_accepts_a_visitors_requests_and_stores_them_once(
    ingest: AsyncTestClient[Litestar], project: dict[str, Any], db: DatabaseHarness, admin_engine: AsyncEngine
) -> None:
    pools = payloads.build_pools(
        str(project["publicKey"]), seed=3, first_chunks=1, incremental_chunks=2, event_batches=2
    )
    visitor = payloads.VisitorIdentity(str(project["publicKey"]))
    requests = [payloads.tracker_request(pools, visitor, seq, 0) for seq in range(5)]
    for request in requests:
        response = await ingest.post(request.path, content=request.body, headers=HEADERS)
        assert response.status_code == 202, response.text
    # A tracker resends the same body after a lost answer: nothing is stored twice.
    for request in requests[:2]:
        assert (await ingest.post(request.path, content=request.body, headers=HEADERS)).status_code == 202
    noop = await ingest.post("/v1/noop", content=payloads.noop_body(pools, visitor, 0), headers=HEADERS)
    assert noop.status_code == 202

    # seq 0, 2, 4 are replay chunks (seq 0, 1, 2), seq 1 and 3 event batches.
    assert await stored_rows(db.admin, int(str(project["id"]))) == {
        "events": 2 * payloads.EVENTS_PER_BATCH,
        "replay_chunks": 3,
    }
    async with admin_engine.connect() as connection:
        session = (
            await connection.execute(
                text("SELECT chunk_count, first_url FROM replay_sessions WHERE project_id = :p"), {"p": project["id"]}
            )
        ).one()
    assert session.chunk_count == 3
    assert session.first_url.startswith("https://example.com/")


def test_saved_pools_load_back_identical(pools: payloads.PayloadPools, tmp_path: Any) -> None:
    path = tmp_path / "payloads.msgpack"
    payloads.save_pools(path, pools)
    assert payloads.load_pools(path) == pools
