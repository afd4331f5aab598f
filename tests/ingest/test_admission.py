"""The admission cap: at most N tracker requests of one process in progress, the others wait their turn."""

from __future__ import annotations

import asyncio

import httpx
from litestar import Litestar, get, post

from services.ingest.admission import TrackerAdmissionMiddleware


def in_process(app: Litestar) -> httpx.AsyncClient:
    # On this test's event loop, so requests really are in progress at once (Litestar's test
    # client runs the app on another thread and answers one request at a time).
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def counting_app(max_concurrent: int) -> tuple[Litestar, dict[str, int], asyncio.Event]:
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

    app = Litestar([events, noop, live], middleware=[TrackerAdmissionMiddleware(max_concurrent)])
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
