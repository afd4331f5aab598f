"""The query API's per-project rate limit: a flooding project gets 429s, another is served."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.testing import AsyncTestClient

from services.common.settings import RateLimitSettings
from services.query.app import create_app
from services.query.settings import QuerySettings
from tests.harness import DatabaseHarness
from tests.query.conftest import auth, new_project


async def test_a_flooding_project_gets_429_while_another_project_is_served(db: DatabaseHarness) -> None:
    flooding, quiet = await new_project(db), await new_project(db)
    # A refill so slow that the test's own duration cannot change the counts.
    app = create_app(
        db.database,
        query_settings=QuerySettings(rollup_interval_s=0),
        rate_limit=RateLimitSettings(requests_per_s=0.01, burst=10),
    )
    async with AsyncTestClient(app) as client:
        flood = await asyncio.gather(*(client.get("/v1/realtime", headers=auth(flooding)) for _ in range(40)))
        calm = [await client.get("/v1/realtime", headers=auth(quiet)) for _ in range(8)]
        spec: dict[str, Any] = {"metrics": ["visitors"], "period": "7d"}
        still_limited = await client.post("/v1/query", json=spec, headers=auth(flooding))

    statuses = [response.status_code for response in flood]
    assert (statuses.count(200), statuses.count(429)) == (10, 30)
    limited = next(response for response in flood if response.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.json()["error"]["message"]
    assert limited.headers["retry-after"] == "100"
    assert [response.status_code for response in calm] == [200] * 8
    # The bucket is per project, not per endpoint.
    assert still_limited.status_code == 429


def test_the_limit_is_read_from_the_services_environment() -> None:
    environ = {"SIGHTLINE_QUERY_RATE_LIMIT_REQUESTS_PER_S": "5", "SIGHTLINE_RATE_LIMIT_BURST": "7"}
    assert RateLimitSettings.from_env("query", environ) == RateLimitSettings(requests_per_s=5, burst=7)
    assert RateLimitSettings.from_env("replay", environ) == RateLimitSettings(requests_per_s=20, burst=7)
