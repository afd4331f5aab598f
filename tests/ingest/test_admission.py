"""The admission cap: at most N tracker requests of one process in progress, the others wait their turn."""

from __future__ import annotations

import asyncio

import httpx
from litestar import Litestar, get, post

from services.common.errors import retry_after_s
from services.ingest.admission import AdmissionLimits, TrackerAdmissionMiddleware


def in_process(app: Litestar) -> httpx.AsyncClient:
    # On this test's event loop, so requests really are in progress at once (Litestar's test
    # client runs the app on another thread and answers one request at a time).
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


ADMITTED = {"/v1/events": 1_000_000, "/v1/noop": 1_000_000}


def counting_app(max_concurrent: int, admission_wait_s: float = 30.0) -> tuple[Litestar, dict[str, int], asyncio.Event]:
    seen = {"now": 0, "most": 0}
    release = asyncio.Event()

    async def hold() -> None:
        seen["now"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        await release.wait()
        seen["now"] -= 1

    @post("/v1/events", status_code=202)
    async def events() -> None:
        await hold()

    @post("/v1/noop", status_code=202)
    async def noop() -> None:
        await hold()

    @get("/health/live")
    async def live() -> None:
        await hold()

    app = Litestar(
        [events, noop, live],
        middleware=[TrackerAdmissionMiddleware(AdmissionLimits(max_concurrent, admission_wait_s), ADMITTED)],
    )
    return app, seen, release


async def test_tracker_posts_beyond_the_cap_wait_and_all_are_answered() -> None:
    app, seen, release = counting_app(max_concurrent=3)
    async with in_process(app) as client:
        posts = [asyncio.create_task(client.post(path)) for path in ["/v1/events", "/v1/noop"] * 5]
        await asyncio.sleep(0.2)
        assert seen["now"] == 3  # the no-op waits at the same door as the tracker paths
        release.set()
        responses = await asyncio.gather(*posts)
    assert [response.status_code for response in responses] == [202] * 10
    assert seen["most"] == 3


async def most_in_progress(max_concurrent: int, method: str, path: str, requests: int = 4) -> int:
    app, seen, release = counting_app(max_concurrent)
    async with in_process(app) as client:
        sent = [asyncio.create_task(client.request(method, path)) for _ in range(requests)]
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.gather(*sent)
    return seen["most"]


async def test_other_paths_and_a_zero_cap_are_not_limited() -> None:
    assert await most_in_progress(1, "GET", "/health/live") == 4
    assert await most_in_progress(0, "POST", "/v1/events") == 4
    assert await most_in_progress(2, "POST", "/v1/events") == 2


async def test_a_request_that_waits_too_long_for_a_slot_is_answered_503_with_retry_after() -> None:
    app, seen, release = counting_app(max_concurrent=1, admission_wait_s=0.3)
    async with in_process(app) as client:
        holder = asyncio.create_task(client.post("/v1/events"))
        await asyncio.sleep(0.1)
        refused = await client.post("/v1/events")
        release.set()
        held = await holder
    assert held.status_code == 202
    assert refused.status_code == 503
    assert refused.json() == {
        "error": {
            "code": "overloaded",
            "message": "This ingest process has more requests than it can take; retry after Retry-After seconds.",
        }
    }
    # One waiter for one slot: backlog 1, so 2 s plus up to 2 s of jitter.
    assert 2 <= int(refused.headers["retry-after"]) <= 4
    assert seen["most"] == 1


def test_retry_after_grows_with_the_backlog_and_is_spread() -> None:
    idle = {retry_after_s(0) for _ in range(500)}
    busy = {retry_after_s(9) for _ in range(500)}
    # Rounded up: 1 s base plus up to 1 s is 2; backlog 9: 10 s base plus up to 10 s.
    assert idle == {2}
    assert min(busy) >= 10
    assert max(busy) <= 20
    assert len(busy) >= 5  # spread over the window, not one second for everyone
