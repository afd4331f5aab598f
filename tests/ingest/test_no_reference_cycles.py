"""A served tracker request leaves no reference cycle behind (issue 18 item 3).

Whatever a request allocates must go by reference counting when it ends. A cycle keeps the
request's task and the context copied into it until the garbage collector finds it: under the
5000-visitor load those cycles made a young collection every ~1,100 requests per worker, each
freeing 20,000-60,000 objects and pausing the worker 50-120 ms (docs/benchmarks.md, "p95b").
The old body read (closures that re-armed their own timer) left ~18 objects per request.

The app is called as ASGI directly, on this loop, so the test client's own objects (httpx's)
are not counted.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.harness import DatabaseHarness
from tests.ingest.conftest import CHROME_WINDOWS, gzip_body, now_iso

REQUESTS = 120


async def call(app: Litestar, path: str, body: bytes) -> int:
    """One POST through the whole ASGI app (admission, decoding, the writer); its status."""
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-encoding", b"gzip"),
        (b"content-length", str(len(body)).encode()),
        (b"user-agent", CHROME_WINDOWS.encode()),
    ]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8001),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the app answers
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)  # type: ignore[arg-type]
    return status


@contextmanager
def cyclic_garbage() -> Iterator[list[Any]]:
    """What the collector would have to free for the block's work (kept, not freed, to count it)."""
    gc.collect()
    found: list[Any] = []
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def events_body(project: dict[str, Any]) -> bytes:
    session = str(uuid.uuid4())
    events = [
        {
            "event": "pageview" if n % 2 else "click",
            "uuid": str(uuid.uuid4()),
            "distinctId": f"visitor-{session[:8]}",
            "sessionId": session,
            "timestamp": now_iso(),
            "url": f"https://example.com/page/{n}",
            "properties": {"n": n, "plan": "pro"},
        }
        for n in range(8)
    ]
    return gzip_body({"projectKey": project["publicKey"], "events": events})


def replay_body(project: dict[str, Any]) -> bytes:
    at = int((datetime.now(UTC) - timedelta(minutes=5)).timestamp() * 1000)
    node = {"type": 0, "childNodes": [{"type": 2, "tagName": "html", "attributes": {}, "childNodes": []}], "id": 1}
    return gzip_body(
        {
            "projectKey": project["publicKey"],
            "sessionId": str(uuid.uuid4()),
            "distinctId": "visitor-1",
            "seq": 0,
            "events": [
                {"type": 4, "timestamp": at, "data": {"href": "https://example.com/", "width": 1280, "height": 800}},
                {"type": 2, "timestamp": at + 1, "data": {"node": node, "initialOffset": {"top": 0, "left": 0}}},
                {"type": 3, "timestamp": at + 2, "data": {"source": 2, "type": 2, "id": 7, "x": 10, "y": 20}},
            ],
        }
    )


@pytest.mark.parametrize("path", ["/v1/events", "/v1/replay", "/v1/noop"])
async def test_a_request_leaves_no_reference_cycle(db: DatabaseHarness, project: dict[str, Any], path: str) -> None:
    app = create_app(db.database, settings=replace(IngestSettings(), benchmark_noop=True), admin_database=db.admin)
    make_body = replay_body if path == "/v1/replay" else events_body
    bodies = [make_body(project) for _ in range(REQUESTS + 1)]
    async with app.lifespan():
        assert await call(app, path, bodies[0]) == 202  # first use: pools, caches, lazy imports
        with cyclic_garbage() as garbage:
            for start in range(1, REQUESTS + 1, 20):
                statuses = await asyncio.gather(*(call(app, path, body) for body in bodies[start : start + 20]))
                assert set(statuses) == {202}
    kinds = Counter(f"{type(item).__module__}.{type(item).__qualname__}" for item in garbage)
    # Not one cycle per request, nor one per batch of the writer: at most a handful in all.
    assert len(garbage) < 10, kinds.most_common(10)
