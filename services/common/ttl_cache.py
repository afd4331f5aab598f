"""A small in-process cache whose misses of one key share a single load.

For answers that every request of a busy project asks for (its project record, the realtime
count): when an entry expires, hundreds of concurrent requests miss at once, and each running
its own query is what overloads the pool or Postgres. Here the first miss loads and the others
wait for that answer. Per process: replicas stay stateless, each holds its own short-lived copy.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MISSING = object()


class SharedTtlCache(Generic[K, V]):
    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V]] = {}

    def get(self, key: K) -> V | object:
        """The cached value, or MISSING when there is none or it expired."""
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return MISSING
        return entry[1]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (time.monotonic() + self._ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, else load()'s answer, cached; concurrent misses of one key share one load()."""
        cached = self.get(key)
        if cached is not MISSING:
            return cached  # type: ignore[return-value]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load_and_put(key, load))
            # If every waiter was cancelled, nobody reads a failure: take it so it is not logged as lost.
            loading.add_done_callback(_consume_outcome)
            self._loading[key] = loading
        # shield: a client that goes away must not cancel the load others are waiting for.
        return await asyncio.shield(loading)

    async def _load_and_put(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await load()
            self.put(key, value)
            return value
        finally:
            self._loading.pop(key, None)


def _consume_outcome(future: asyncio.Future[V]) -> None:
    if not future.cancelled():
        future.exception()
