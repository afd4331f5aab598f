"""A cap on the tracker requests one ingest process works on at once; the rest wait at the door.

Granian's own backpressure caps connections, not requests, and trackers keep their connections
open, so it cannot be used for this. Past the cap, a request waits before its body is read or
decoded: waiting costs the event loop nothing, so the loop's turns stay short and the batch
writer (which needs a few turns per batch) keeps up. Without a cap, an overloaded process
starts work on every request at once, each loop turn grows to hundreds of milliseconds, and
the writer falls behind (seen in the 5000-visitor load test: 50-65 % of a request's time in
the writer's queue).
"""

from __future__ import annotations

import asyncio

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from services.common.telemetry import step_span
from services.ingest.cors import TRACKER_PATHS

# The no-op endpoint is the load test's baseline for the tracker path, so it waits at the same door.
ADMITTED_PATHS = TRACKER_PATHS | {"/v1/noop"}


class TrackerAdmissionMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, max_concurrent: int) -> None:
        self._max_concurrent = max_concurrent
        self._slots: asyncio.Semaphore | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if self._max_concurrent <= 0 or scope["path"] not in ADMITTED_PATHS or scope.get("method") != "POST":
            await next_app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_concurrent)  # made on the worker's loop
        with step_span("ingest.admission_wait"):
            await self._slots.acquire()
        try:
            await next_app(scope, receive, send)
        finally:
            self._slots.release()
