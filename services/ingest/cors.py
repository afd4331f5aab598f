"""CORS for browser trackers: any origin whose host is some project's allowed domain.

A preflight carries no body, so it cannot name a project; it is allowed when the origin
belongs to any project, and the real request is then checked against its own project's
domains (403 otherwise). Error responses carry the headers too, so a tracker can read a
503's Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import project_repository
from services.common.errors import ErrorBody, ErrorDetail, is_database_unavailable
from services.ingest.enrichment import host_is_allowed, origin_host

logger = logging.getLogger(__name__)

TRACKER_PATHS = frozenset({"/v1/events", "/v1/replay"})
_PREFLIGHT_MAX_AGE_S = "86400"
_ORIGIN_NOT_ALLOWED = msgspec.json.encode(
    ErrorBody(ErrorDetail(code="origin_not_allowed", message="This origin is not among any project's allowed domains."))
)


class AllowedOrigins:
    """Every project's allowed domains, reloaded at most every ttl_s, by one request at a time.

    When the reload fails because the database is unreachable, the previous list is kept (and
    tried again after RETRY_AFTER_FAILURE_S): the request then goes on to its own 503, which must
    carry the CORS headers or a browser's tracker cannot read its Retry-After. Before, the
    middleware raised and the 503 left without them, and every waiting request ran its own reload.
    """

    RETRY_AFTER_FAILURE_S = 1.0

    def __init__(self, engine: AsyncEngine, ttl_s: float) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._domains: tuple[str, ...] | None = None
        self._next_load_at = float("-inf")
        self._loading: asyncio.Task[None] | None = None

    async def allows(self, origin: str) -> bool:
        host = origin_host(origin)
        if host is None:
            return False
        if time.monotonic() >= self._next_load_at:
            await self._reload()
        return bool(self._domains) and host_is_allowed(host, self._domains or ())

    async def _reload(self) -> None:
        if self._loading is None:
            self._loading = asyncio.create_task(self._load())
            self._loading.add_done_callback(self._loaded)
        try:
            await asyncio.shield(self._loading)
        except Exception as exc:
            if self._domains is None or not is_database_unavailable(exc):
                raise  # nothing to fall back on, or not an outage

    async def _load(self) -> None:
        try:
            async with self._engine.connect() as connection:
                self._domains = tuple(sorted(await project_repository.all_allowed_domains(connection)))
            self._next_load_at = time.monotonic() + self._ttl_s
        except Exception as exc:
            if is_database_unavailable(exc) and self._domains is not None:
                logger.warning("allowed domains not reloaded, keeping the previous list: %s", type(exc).__name__)
                self._next_load_at = time.monotonic() + self.RETRY_AFTER_FAILURE_S
            raise

    def _loaded(self, task: asyncio.Task[None]) -> None:
        self._loading = None
        if not task.cancelled():
            task.exception()  # read here too, in case no request is still waiting for it


class TrackerCorsMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope["path"] not in TRACKER_PATHS:
            await next_app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        allowed_origins: AllowedOrigins = scope["litestar_app"].state.allowed_origins
        allowed = origin is not None and await allowed_origins.allows(origin)

        if scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await _answer_preflight(send, origin if allowed else None)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and allowed and origin is not None:
                response_headers = MutableScopeHeaders.from_message(message)
                response_headers["Access-Control-Allow-Origin"] = origin
                response_headers["Access-Control-Expose-Headers"] = "Retry-After"
                response_headers.add("Vary", "Origin")
            await send(message)

        await next_app(scope, receive, send_with_cors)


def _header(scope: Scope, wanted: bytes) -> str | None:
    # ASGI servers send header names lower-cased.
    for name, value in scope["headers"]:
        if name == wanted:
            return value.decode("latin-1")
    return None


async def _answer_preflight(send: Send, allowed_origin: str | None) -> None:
    if allowed_origin is None:
        body = _ORIGIN_NOT_ALLOWED
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"), (b"vary", b"Origin")]
        status = 403
    else:
        body = b""
        headers = [
            (b"access-control-allow-origin", allowed_origin.encode("latin-1")),
            (b"access-control-allow-methods", b"POST"),
            (b"access-control-allow-headers", b"Content-Type, Content-Encoding"),
            (b"access-control-max-age", _PREFLIGHT_MAX_AGE_S.encode()),
            (b"vary", b"Origin"),
        ]
        status = 204
    headers.append((b"content-length", str(len(body)).encode()))
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
