"""The replay API's per-project rate limit: a flooding project gets 429s, another is served."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.testing import AsyncTestClient

from services.common.settings import RateLimitSettings
from services.replay.app import create_app
from tests.harness import DatabaseHarness
from tests.replay.conftest import Chunk, StoreSession, auth


async def test_a_flooding_project_gets_429_while_another_project_is_served(
    db: DatabaseHarness, project: dict[str, Any], other_project: dict[str, Any], store: StoreSession
) -> None:
    stored = await store([Chunk(0, [0, 100], full_snapshot=True)])
    app = create_app(db.database, rate_limit=RateLimitSettings(requests_per_s=0.01, burst=10))
    async with AsyncTestClient(app) as client:
        flood = await asyncio.gather(*(client.get("/v1/sessions", headers=auth(project)) for _ in range(40)))
        calm = [await client.get("/v1/sessions", headers=auth(other_project)) for _ in range(8)]
        recording = await client.get(f"/v1/sessions/{stored.session_id}/recording", headers=auth(project))

    statuses = [response.status_code for response in flood]
    assert (statuses.count(200), statuses.count(429)) == (10, 30)
    limited = next(response for response in flood if response.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["retry-after"] == "100"
    served = next(response for response in flood if response.status_code == 200)
    assert [session["id"] for session in served.json()["sessions"]] == [stored.session_id]
    assert [response.status_code for response in calm] == [200] * 8
    assert all(response.json()["sessions"] == [] for response in calm)
    # Streaming endpoints share the project's bucket.
    assert recording.status_code == 429
