"""GET /v1/sessions/{id}/recording: order, seeking, gzip passthrough, streaming in batches."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.gzip_stream import STEP_BYTES
from services.replay.repository import ChunkBody
from services.replay.service import RecordingFormat, ReplayService, ndjson_line
from tests.replay.conftest import Chunk, StoredSession, StoreSession

FRAMES = "application/vnd.sightline.replay-chunks"


def ndjson_seqs(body: bytes) -> list[int]:
    return [json.loads(line)["seq"] for line in body.decode().splitlines()]


def parse_frames(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    frames: list[tuple[dict[str, Any], bytes]] = []
    position = 0
    while position < len(body):
        line_end = body.index(b"\n", position)
        header = json.loads(body[position:line_end])
        data_start = line_end + 1
        frames.append((header, body[data_start : data_start + header["byteSize"]]))
        position = data_start + header["byteSize"]
    return frames


async def _ten_second_chunks(store: StoreSession, **options: Any) -> StoredSession:
    """Six chunks of 10 s each; full snapshots in chunks 0 and 3, stored out of order."""
    return await store(
        [Chunk(seq, [seq * 10_000, seq * 10_000 + 9_000], full_snapshot=seq in (0, 3)) for seq in range(6)],
        session_id="seekable",
        insert_order=[3, 5, 0, 4, 1, 2],
        **options,
    )


async def test_chunks_stream_in_seq_order_whatever_order_they_arrived_in(
    client: AsyncTestClient[Any], store: StoreSession
) -> None:
    session = await _ten_second_chunks(store)
    response = await client.get("/v1/sessions/seekable/recording")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert "content-encoding" not in response.headers
    lines = response.content.decode().split("\n")
    assert lines[-1] == ""  # every line, the last included, ends with a newline
    assert [json.loads(line) for line in lines[:-1]] == [session.chunks[seq].body for seq in range(6)]
    assert response.headers["x-replay-first-seq"] == "0"
    assert response.headers["x-replay-last-seq"] == "5"
    assert response.headers["x-replay-chunk-count"] == "6"
    assert response.headers["x-replay-start-offset-ms"] == "0"


@pytest.mark.parametrize(
    ("window", "seqs", "start_offset_ms"),
    [
        ({}, [0, 1, 2, 3, 4, 5], 0),
        ({"from": 0}, [0, 1, 2, 3, 4, 5], 0),
        # 25 s lies in chunk 2; the nearest full snapshot at or before it is in chunk 0.
        ({"from": 25_000}, [0, 1, 2, 3, 4, 5], 0),
        # 30 s is where chunk 3 (a full snapshot) begins.
        ({"from": 30_000}, [3, 4, 5], 30_000),
        ({"from": 45_000}, [3, 4, 5], 30_000),
        # Past the end: still from the last snapshot, so a player can show the final state.
        ({"from": 500_000}, [3, 4, 5], 30_000),
        # "to" ends with the last chunk that begins at or before it.
        ({"from": 35_000, "to": 40_000}, [3, 4], 30_000),
        ({"from": 35_000, "to": 39_999}, [3], 30_000),
        ({"to": 15_000}, [0, 1], 0),
        ({"from": 45_000, "to": 45_000}, [3, 4], 30_000),
    ],
)
async def test_seeking_starts_at_the_nearest_preceding_full_snapshot(
    client: AsyncTestClient[Any],
    store: StoreSession,
    window: dict[str, int],
    seqs: list[int],
    start_offset_ms: int,
) -> None:
    await _ten_second_chunks(store)
    response = await client.get("/v1/sessions/seekable/recording", params=window)
    assert response.status_code == 200, response.text
    assert ndjson_seqs(response.content) == seqs
    assert response.headers["x-replay-first-seq"] == str(seqs[0])
    assert response.headers["x-replay-last-seq"] == str(seqs[-1])
    assert response.headers["x-replay-start-offset-ms"] == str(start_offset_ms)


async def test_seeking_before_the_first_snapshot_starts_at_the_first_snapshot(
    client: AsyncTestClient[Any], store: StoreSession
) -> None:
    # Chunk 0 was lost or carries no snapshot; the player still needs one to start.
    await store(
        [Chunk(0, [0, 5_000]), Chunk(1, [10_000], full_snapshot=True), Chunk(2, [20_000])],
        session_id="late-snapshot",
    )
    response = await client.get("/v1/sessions/late-snapshot/recording", params={"from": 2_000})
    assert ndjson_seqs(response.content) == [1, 2]
    assert response.headers["x-replay-start-offset-ms"] == "10000"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=-1", "from"),
        ("from=abc", "from"),
        ("from=1.5", "from"),
        ("from=99999999999999999999", "from"),
        ("from=" + "9" * 5000, "from"),
        ("from=%C2%B2", "from"),  # a superscript two: a digit to str.isdigit, not to us
        ("to=" + "9" * 5000, "to"),
        ("to=-5", "to"),
        ("to=x", "to"),
        ("from=20000&to=10000", "to"),
    ],
)
async def test_malformed_window_is_422(
    client: AsyncTestClient[Any], store: StoreSession, query: str, field: str
) -> None:
    await _ten_second_chunks(store)
    response = await client.get(f"/v1/sessions/seekable/recording?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


async def test_unknown_session_is_404_and_malformed_id_is_422(client: AsyncTestClient[Any]) -> None:
    assert (await client.get("/v1/sessions/nope/recording")).status_code == 404
    response = await client.get("/v1/sessions/" + "x" * 201 + "/recording")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "id"


async def test_chunk_frames_pass_the_stored_bytes_through_unchanged(
    client: AsyncTestClient[Any], store: StoreSession
) -> None:
    session = await store(
        [
            Chunk(0, [0, 1_000], full_snapshot=True),
            Chunk(1, [2_000, 3_000], content_encoding="identity"),
            Chunk(2, [4_000, 5_000]),
        ],
        session_id="passthrough",
        insert_order=[2, 1, 0],
    )
    response = await client.get("/v1/sessions/passthrough/recording", headers={"Accept": FRAMES})
    assert response.status_code == 200
    assert response.headers["content-type"] == FRAMES
    assert "content-encoding" not in response.headers
    frames = parse_frames(response.content)
    assert [header for header, _ in frames] == [
        {"seq": 0, "contentEncoding": "gzip", "byteSize": len(session.chunks[0].data)},
        {"seq": 1, "contentEncoding": "identity", "byteSize": len(session.chunks[1].data)},
        {"seq": 2, "contentEncoding": "gzip", "byteSize": len(session.chunks[2].data)},
    ]
    # Byte for byte what the tracker sent: no recompression on the way out.
    assert [data for _, data in frames] == [session.chunks[seq].data for seq in range(3)]
    assert json.loads(gzip.decompress(frames[2][1])) == session.chunks[2].body


async def test_frames_respect_the_seek_window(client: AsyncTestClient[Any], store: StoreSession) -> None:
    session = await _ten_second_chunks(store)
    response = await client.get(
        "/v1/sessions/seekable/recording", params={"from": 31_000, "to": 41_000}, headers={"Accept": FRAMES}
    )
    assert [(header["seq"], data) for header, data in parse_frames(response.content)] == [
        (3, session.chunks[3].data),
        (4, session.chunks[4].data),
    ]


async def test_ndjson_keeps_one_chunk_per_line_even_if_the_body_has_line_breaks(
    client: AsyncTestClient[Any], store: StoreSession, admin_engine: AsyncEngine, project: dict[str, Any]
) -> None:
    await store([Chunk(0, [0], full_snapshot=True), Chunk(1, [1_000])], session_id="pretty")
    pretty = {"seq": 1, "events": [{"type": 3, "data": {"text": "line\nbreak"}, "timestamp": 1}]}
    # Pretty-printed JSON (with raw line breaks between tokens), stored gzip as a tracker might send it.
    raw = json.dumps(pretty, indent=2).replace("\n", "\r\n").encode()
    async with admin_engine.begin() as connection:
        await connection.execute(
            text("UPDATE replay_chunks SET data = :data WHERE project_id = :p AND session_id = 'pretty' AND seq = 1"),
            {"data": gzip.compress(raw), "p": project["id"]},
        )
    lines = (await client.get("/v1/sessions/pretty/recording")).content.decode().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1]) == pretty


def test_a_body_larger_than_one_inflate_step_is_decompressed_whole_and_in_steps() -> None:
    body = json.dumps({"seq": 0, "events": [{"type": 3, "data": {"x": i}, "timestamp": i} for i in range(60_000)]})
    assert len(body) > 3 * STEP_BYTES
    pieces = list(ndjson_line(ChunkBody(0, "gzip", gzip.compress(body.encode()))))
    assert b"".join(pieces) == body.encode() + b"\n"
    assert max(len(piece) for piece in pieces) <= STEP_BYTES


def test_a_body_of_several_gzip_members_is_read_whole() -> None:
    data = gzip.compress(b'{"seq": 0, ') + gzip.compress(b'"events": []}')
    assert b"".join(ndjson_line(ChunkBody(0, "gzip", data))) == b'{"seq": 0, "events": []}\n'


async def test_read_batches_are_bounded_by_bytes_and_the_first_is_small(
    store: StoreSession, admin_engine: AsyncEngine, project: dict[str, Any], engine: AsyncEngine
) -> None:
    await store([Chunk(0, [0], full_snapshot=True)] + [Chunk(seq, [seq * 5_000]) for seq in range(1, 360)])
    session_id = "sizes"
    async with admin_engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE replay_chunks SET session_id = :s, byte_size = CASE WHEN seq = 0 THEN 50000 ELSE 3000 END"
                " WHERE project_id = :p"
            ),
            {"s": session_id, "p": project["id"]},
        )
        await connection.execute(
            text("UPDATE replay_sessions SET session_id = :s WHERE project_id = :p"),
            {"s": session_id, "p": project["id"]},
        )
    opened = await ReplayService(engine).open_recording(project["id"], session_id, None, None)
    # A chunk joins the batch where its first byte falls. Chunk i >= 1 starts at
    # 50,000 + 3,000 (i - 1). First batch: starts below 64 KiB (65,536), i <= 6. Then
    # 256 KiB (262,144) each: starts below 327,680 (i <= 93), 589,824 (i <= 180),
    # 851,968 (i <= 268), 1,114,112 (i <= 355), and the rest.
    assert [(b.first_seq, b.last_seq, b.chunk_count) for b in opened.plan.batches] == [
        (0, 6, 7),
        (7, 93, 87),
        (94, 180, 87),
        (181, 268, 88),
        (269, 355, 87),
        (356, 359, 4),
    ]
    assert [body.seq for body in opened.first_batch] == list(range(7))


async def test_first_bytes_leave_before_later_chunks_are_read(
    store: StoreSession, admin_engine: AsyncEngine, project: dict[str, Any], engine: AsyncEngine
) -> None:
    # 100 chunks of ~30 kB gzip each: several read batches.
    session = await store(
        [Chunk(0, list(range(4_000)), full_snapshot=True)]
        + [Chunk(seq, list(range(seq * 10_000, seq * 10_000 + 4_000))) for seq in range(1, 100)],
        session_id="long",
    )
    service = ReplayService(engine)
    opened = await service.open_recording(project["id"], "long", None, None)
    assert len(opened.plan.batches) >= 3
    stream = service.stream_recording(project["id"], "long", opened, RecordingFormat.CHUNK_FRAMES)
    first = await anext(stream)
    # Chunks deleted once the first bytes are out are missing from the rest of the stream:
    # they had not been read yet. (The batch after the first may already be read ahead.)
    third_batch_start = opened.plan.batches[2].first_seq
    async with admin_engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM replay_chunks WHERE project_id = :p AND session_id = 'long' AND seq >= :seq"),
            {"p": project["id"], "seq": third_batch_start},
        )
    rest = b"".join([piece async for piece in stream])
    assert [header["seq"] for header, _ in parse_frames(first + rest)] == list(range(third_batch_start))
    assert parse_frames(first)[0][1] == session.chunks[0].data


async def test_a_session_without_chunks_streams_nothing(client: AsyncTestClient[Any], store: StoreSession) -> None:
    # Ingest writes the session row with its first chunk, but a retention or GDPR run
    # could race with it; an empty recording is then the honest answer.
    await store([], session_id="empty")
    for accept in ("application/x-ndjson", FRAMES):
        response = await client.get("/v1/sessions/empty/recording", headers={"Accept": accept})
        assert (response.status_code, response.content) == (200, b"")
        assert response.headers["x-replay-chunk-count"] == "0"
        assert "x-replay-first-seq" not in response.headers
