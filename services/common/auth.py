"""Finding the project a request acts for: by public ingest key, or by secret read key.

Both lookups are cached in-process for a short time: every tracker request carries a key,
and a database round trip per request just to resolve it would double the hot path's
queries. A revoked or rotated key stops working within ``ttl_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import project_repository
from services.common.errors import ApiError, ServiceUnavailable
from services.common.keys import SECRET_KEY_PREFIX, hash_secret_key
from services.common.project_repository import ProjectRecord
from services.common.rate_limit import TokenBuckets
from services.common.ttl_cache import MISSING, SharedTtlCache


class ProjectCache(SharedTtlCache[str, ProjectRecord | None]):
    """Key to project (or to "no such project") for ttl_s, one lookup per key at a time.

    Every tracker request of a site carries the same key, so when its entry expires (every ttl_s,
    or after a database outage) hundreds of requests miss at once. Each running its own lookup
    took every pooled connection from the batch writer and answered 503 (pool timeout) for about
    13 s after the database came back (seen in the fault run, `sightline chaos`); now the
    first miss looks the key up and the others wait for that answer.

    Keys are public (they sit in every tracked page), so anyone can send random ones. "No such
    project" answers live apart (``max_unknown_entries``), so a flood of unknown keys evicts only
    other unknown keys, never a real project; and at most ``max_concurrent_lookups`` lookups run at
    once (a miss waits ``lookup_wait_s`` for a turn, then 503), so the flood never holds more than
    that many pooled connections and the batch writer keeps the rest. A key that was a project
    takes its turns apart from those (as many again): when a real project's entry expires during
    a flood, its requests wait for their own lookup, not behind the flood's (before, all of them
    waited for a turn, up to lookup_wait_s, every ttl_s). Only keys that were real projects get
    there, so a flood cannot use those turns.
    """

    def __init__(
        self,
        ttl_s: float = 30.0,
        max_entries: int = 10_000,
        max_unknown_entries: int = 10_000,
        max_concurrent_lookups: int = 4,
        lookup_wait_s: float = 0.5,
    ) -> None:
        super().__init__(ttl_s, max_entries, max_concurrent_lookups, lookup_wait_s)
        self._unknown: SharedTtlCache[str, None] = SharedTtlCache(ttl_s, max_unknown_entries)
        self._known_lookup_slots: asyncio.Semaphore | None = None

    def get(self, key: str) -> ProjectRecord | None | object:
        found = super().get(key)
        return self._unknown.get(key) if found is MISSING else found

    def put(self, key: str, value: ProjectRecord | None) -> None:
        if value is None:
            self._unknown.put(key, None)
        else:
            super().put(key, value)

    def _slots_for(self, key: str) -> asyncio.Semaphore | None:
        known = self._max_concurrent_loads > 0 and super().stale(key) not in (MISSING, None)
        if not known:
            return super()._slots_for(key)
        if self._known_lookup_slots is None:
            self._known_lookup_slots = asyncio.Semaphore(self._max_concurrent_loads)  # on the running loop
        return self._known_lookup_slots


async def project_for_public_key(engine: AsyncEngine, cache: ProjectCache, public_key: str) -> ProjectRecord | None:
    return await _cached(engine, cache, public_key, project_repository.find_by_public_key)


async def project_for_secret_key(engine: AsyncEngine, cache: ProjectCache, secret_key: str) -> ProjectRecord | None:
    return await _cached(engine, cache, hash_secret_key(secret_key), project_repository.find_by_secret_key_hash)


async def _cached(
    engine: AsyncEngine,
    cache: ProjectCache,
    key: str,
    find: Callable[[AsyncConnection, str], Awaitable[ProjectRecord | None]],
) -> ProjectRecord | None:
    async def look_up() -> ProjectRecord | None:
        async with engine.connect() as connection:
            return await find(connection, key)

    try:
        return await cache.get_or_load(key, look_up)
    except TimeoutError as exc:
        # Waited too long for a lookup turn (a flood of unknown keys), or the lookup itself hung.
        # A project known a moment ago is still good for its own requests meanwhile.
        stale = cache.stale(key)
        if stale is not MISSING and stale is not None:
            return stale  # type: ignore[return-value]
        raise ServiceUnavailable("key_lookups_busy", "Too many key lookups are waiting; retry shortly.") from exc


async def provide_read_project(request: Request[Any, Any, Any], state: State) -> ProjectRecord:
    """Litestar dependency for read APIs: ``Authorization: Bearer <secret key>`` → its project.

    Apps that use it put a ``ProjectCache`` at ``state.project_cache`` and the per-project
    ``TokenBuckets`` at ``state.rate_limit``: a project over its limit is answered 429 here,
    before its request reaches the database.
    """
    header = request.headers.get("authorization", "")
    scheme, _, secret_key = header.partition(" ")
    secret_key = secret_key.strip()
    if scheme.lower() != "bearer" or not secret_key:
        raise ApiError(
            401,
            "missing_credentials",
            "Send the project's secret key as 'Authorization: Bearer sk_...'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secret_key.startswith(SECRET_KEY_PREFIX) or len(secret_key) > 200:
        raise ApiError(401, "invalid_key", "That is not a secret key.", headers={"WWW-Authenticate": "Bearer"})
    project = await project_for_secret_key(state.engine, state.project_cache, secret_key)
    if project is None:
        raise ApiError(401, "invalid_key", "No project has that secret key.", headers={"WWW-Authenticate": "Bearer"})
    rate_limit: TokenBuckets = state.rate_limit
    rate_limit.take(project.project_id)
    return project
