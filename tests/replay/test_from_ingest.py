"""What the ingest service stores, the replay API plays back: both real apps, one database."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar.testing import AsyncTestClient

from services.ingest.app import create_app as create_ingest_app
from services.ingest.settings import IngestSettings
from tests.harness import DatabaseHarness
from tests.replay.test_recording import FRAMES, parse_frames

BASE_MS = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)


def _body(project: dict[str, Any], seq: int, events: list[dict[str, Any]]) -> bytes:
    payload = {"projectKey": project["publicKey"], "sessionId": "tab-1", "distinctId": "v-9", "seq": seq}
    return gzip.compress(json.dumps({**payload, "events": events}).encode())


async def test_chunks_posted_to_ingest_out_of_order_play_back_in_order_byte_for_byte(
    db: DatabaseHarness, project: dict[str, Any], client: AsyncTestClient[Any]
) -> None:
    snapshot = [
        {"type": 4, "timestamp": BASE_MS, "data": {"href": "https://example.com/", "width": 1280, "height": 800}},
        {"type": 2, "timestamp": BASE_MS, "data": {"node": {"type": 0, "childNodes": [], "id": 1}}},
    ]
    moves = [{"type": 3, "timestamp": BASE_MS + 5_000 + i, "data": {"source": 1, "positions": []}} for i in range(3)]
    clicks = [{"type": 3, "timestamp": BASE_MS + 12_000, "data": {"source": 2, "type": 2, "id": 7, "x": 1, "y": 2}}]
    posted = {0: _body(project, 0, snapshot), 1: _body(project, 1, moves), 2: _body(project, 2, clicks)}
    headers = {"content-type": "application/json", "content-encoding": "gzip", "user-agent": CHROME}
    async with AsyncTestClient(create_ingest_app(db.database, settings=IngestSettings())) as ingest:
        for seq in (2, 0, 1):
            response = await ingest.post("/v1/replay", content=posted[seq], headers=headers)
            assert response.status_code == 202, response.text

    listed = (await client.get("/v1/sessions")).json()["sessions"]
    assert [(s["id"], s["distinctId"], s["durationMs"], s["chunkCount"]) for s in listed] == [
        ("tab-1", "v-9", 12_000, 3)
    ]

    frames = await client.get("/v1/sessions/tab-1/recording", headers={"Accept": FRAMES})
    assert [(header["seq"], data) for header, data in parse_frames(frames.content)] == [
        (0, posted[0]),
        (1, posted[1]),
        (2, posted[2]),
    ]
    lines = (await client.get("/v1/sessions/tab-1/recording", params={"from": 6_000})).content.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2]  # the only snapshot is in chunk 0
    assert json.loads(lines[2])["events"] == clicks
