"""A small in-process cache whose misses of one key share a single load.

For answers that every request of a busy project asks for (its project record, the realtime
count): when an entry expires, hundreds of concurrent requests miss at once, and each running
its own query is what overloads the pool or Postgres. Here the first miss loads and the others
wait for that answer. Per process: replicas stay stateless, each holds its own short-lived copy.

Eviction is least-recently-used (a hit moves an entry to the back), so a stream of one-off keys
evicts other one-off keys, not the entries that requests keep using. With
``max_concurrent_loads``, at most that many loads run at once and a miss waits for a turn at
most ``load_wait_s`` (then TimeoutError): misses of many distinct keys cannot take every
pooled connection.
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
    def __init__(
        self, ttl_s: float, max_entries: int = 10_000, max_concurrent_loads: int = 0, load_wait_s: float = 2.0
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V]] = {}
        self._max_concurrent_loads = max_concurrent_loads
        self._load_wait_s = load_wait_s
        self._load_slots: asyncio.Semaphore | None = None

    def get(self, key: K) -> V | object:
        """The cached value, or MISSING when there is none or it expired."""
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return MISSING
        self._entries.move_to_end(key)
        return entry[1]

    def stale(self, key: K) -> V | object:
        """The last value stored for key, expired or not (MISSING if none): for when a load cannot run."""
        entry = self._entries.get(key)
        return MISSING if entry is None else entry[1]

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

    def _slots_for(self, key: K) -> asyncio.Semaphore | None:
        """The turns key's load waits for (None: no limit); made on the running loop."""
        if self._max_concurrent_loads <= 0:
            return None
        if self._load_slots is None:
            self._load_slots = asyncio.Semaphore(self._max_concurrent_loads)
        return self._load_slots

    async def _load_and_put(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        try:
            slots = self._slots_for(key)
            if slots is None:
                value = await load()
            else:
                async with asyncio.timeout(self._load_wait_s):
                    await slots.acquire()
                try:
                    value = await load()
                finally:
                    slots.release()
            self.put(key, value)
            return value
        finally:
            self._loading.pop(key, None)


def _consume_outcome(future: asyncio.Future[V]) -> None:
    if not future.cancelled():
        future.exception()
