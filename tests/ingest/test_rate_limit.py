"""Per-project rate limits: a flooding project gets 429s, another project is not touched."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.cli import admin
from services.common.rate_limit import RateLimited, TokenBuckets
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.harness import DatabaseHarness
from tests.ingest.conftest import JSON, json_body, pageview


def test_a_bucket_refills_at_its_rate() -> None:
    buckets = TokenBuckets(rate_per_s=10, burst=3)
    for _ in range(3):
        buckets.take("a")
    with pytest.raises(RateLimited) as refused:
        buckets.take("a")
    assert refused.value.status_code == 429
    assert refused.value.headers == {"Retry-After": "1"}
    buckets.take("b")  # another key has its own bucket


def test_a_disabled_limiter_never_refuses() -> None:
    buckets = TokenBuckets(rate_per_s=0, burst=0)
    for _ in range(1000):
        buckets.take("a")


async def test_a_flooding_project_gets_429_while_another_project_is_served(
    db: DatabaseHarness, project: dict[str, Any]
) -> None:
    quiet = await admin.create_project(db.admin, name="quiet", domains=["example.com"], timezone="UTC")
    # A refill so slow that the test's own duration cannot change the counts. Both projects'
    # requests come from the test client's one address, whose 50 refusals would otherwise meet
    # the door (tests/hostile/test_budgets.py): this is about the projects' buckets.
    settings = IngestSettings(rate_limit_requests_per_s=0.01, rate_limit_burst=10, address_refusals_per_s=0)

    def body(key: object) -> bytes:
        return json_body({"projectKey": key, "events": [pageview()]})

    async with AsyncTestClient(create_app(db.database, settings=settings)) as client:
        flood = await asyncio.gather(
            *(client.post("/v1/events", content=body(project["publicKey"]), headers=JSON) for _ in range(60))
        )
        calm = [await client.post("/v1/events", content=body(quiet["publicKey"]), headers=JSON) for _ in range(8)]

    statuses = [response.status_code for response in flood]
    assert (statuses.count(202), statuses.count(429)) == (10, 50)
    limited = next(response for response in flood if response.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["retry-after"] == "100"
    assert [response.status_code for response in calm] == [202] * 8
