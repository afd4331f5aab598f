"""The project cache: concurrent misses of one key share one lookup (no stampede on the pool)."""

from __future__ import annotations

import asyncio

import pytest

from services.common.auth import ProjectCache
from services.common.project_repository import ProjectRecord


async def test_concurrent_misses_of_one_key_share_a_single_lookup() -> None:
    cache = ProjectCache(ttl_s=30)
    lookups = 0
    answer = asyncio.Event()

    async def find() -> ProjectRecord | None:
        nonlocal lookups
        lookups += 1
        await answer.wait()
        return None  # "no such project" is cached like a project

    waiting = [asyncio.create_task(cache.get_or_load("pk_unknown", find)) for _ in range(50)]
    await asyncio.sleep(0.01)
    answer.set()
    assert await asyncio.gather(*waiting) == [None] * 50
    assert lookups == 1
    assert cache.get("pk_unknown") is None


async def test_a_failed_lookup_fails_every_waiter_and_the_next_miss_looks_again() -> None:
    cache = ProjectCache(ttl_s=30)
    lookups = 0
    answer = asyncio.Event()

    async def unreachable() -> ProjectRecord | None:
        nonlocal lookups
        lookups += 1
        await answer.wait()
        raise ConnectionRefusedError("database down")

    waiting = [asyncio.create_task(cache.get_or_load("pk_a", unreachable)) for _ in range(5)]
    await asyncio.sleep(0.01)
    answer.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(result) for result in results] == [ConnectionRefusedError] * 5
    assert lookups == 1

    async def found() -> ProjectRecord | None:
        return None

    assert await cache.get_or_load("pk_a", found) is None  # not stuck on the failed lookup


async def test_a_cancelled_waiter_does_not_cancel_the_lookup_of_the_others() -> None:
    cache = ProjectCache(ttl_s=30)
    answer = asyncio.Event()

    async def find() -> ProjectRecord | None:
        await answer.wait()
        return None

    first = asyncio.create_task(cache.get_or_load("pk_b", find))
    second = asyncio.create_task(cache.get_or_load("pk_b", find))
    await asyncio.sleep(0.01)
    first.cancel()
    answer.set()
    assert await second is None
    with pytest.raises(asyncio.CancelledError):
        await first
