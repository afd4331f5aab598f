"""The project cache: concurrent misses of one key share one lookup (no stampede on the pool)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from services.common.auth import ProjectCache
from services.common.project_repository import ProjectRecord
from services.common.ttl_cache import MISSING


@dataclass
class HeldLookup:
    """A lookup that counts its calls and waits until released; then it finds no project, or
    raises `failure`."""

    failure: Exception | None = None
    calls: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self) -> ProjectRecord | None:
        self.calls += 1
        await self.released.wait()
        if self.failure is not None:
            raise self.failure
        return None


async def test_concurrent_misses_of_one_key_share_a_single_lookup() -> None:
    cache = ProjectCache(ttl_s=30)
    find = HeldLookup()
    waiting = [asyncio.create_task(cache.get_or_load("pk_unknown", find)) for _ in range(50)]
    await asyncio.sleep(0.01)
    find.released.set()
    assert await asyncio.gather(*waiting) == [None] * 50
    assert find.calls == 1
    assert cache.get("pk_unknown") is None  # "no such project" is cached like a project


async def test_a_failed_lookup_fails_every_waiter_and_the_next_miss_looks_again() -> None:
    cache = ProjectCache(ttl_s=30)
    unreachable = HeldLookup(failure=ConnectionRefusedError("database down"))
    waiting = [asyncio.create_task(cache.get_or_load("pk_a", unreachable)) for _ in range(5)]
    await asyncio.sleep(0.01)
    unreachable.released.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(result) for result in results] == [ConnectionRefusedError] * 5
    assert unreachable.calls == 1

    async def found() -> ProjectRecord | None:
        return None

    assert await cache.get_or_load("pk_a", found) is None  # not stuck on the failed lookup


async def test_a_cancelled_waiter_does_not_cancel_the_lookup_of_the_others() -> None:
    cache = ProjectCache(ttl_s=30)
    find = HeldLookup()
    first = asyncio.create_task(cache.get_or_load("pk_b", find))
    second = asyncio.create_task(cache.get_or_load("pk_b", find))
    await asyncio.sleep(0.01)
    first.cancel()
    find.released.set()
    assert await second is None
    with pytest.raises(asyncio.CancelledError):
        await first


def project_record(key: str) -> ProjectRecord:
    return ProjectRecord(
        project_id=1, name="p", allowed_domains=("example.com",), timezone="UTC", public_key=key, retention_days=30
    )


async def test_eviction_is_least_recently_used() -> None:
    cache = ProjectCache(ttl_s=30, max_entries=2)
    cache.put("pk_a", project_record("pk_a"))
    cache.put("pk_b", project_record("pk_b"))
    assert cache.get("pk_a") == project_record("pk_a")  # a is used again, b is not
    cache.put("pk_c", project_record("pk_c"))
    assert cache.get("pk_b") is MISSING
    assert cache.get("pk_a") == project_record("pk_a")
    assert cache.get("pk_c") == project_record("pk_c")


async def test_a_flood_of_unknown_keys_never_evicts_a_known_project() -> None:
    cache = ProjectCache(ttl_s=30, max_entries=2, max_unknown_entries=100)
    cache.put("pk_real", project_record("pk_real"))
    for number in range(10_000):
        cache.put(f"pk_random{number}", None)
    assert cache.get("pk_real") == project_record("pk_real")
    assert cache.get("pk_random9999") is None  # the latest unknown keys are remembered as unknown
    assert cache.get("pk_random0") is MISSING  # the oldest fell out of the unknown store


async def test_lookups_of_distinct_keys_run_a_few_at_a_time_and_a_long_wait_gives_up() -> None:
    cache = ProjectCache(ttl_s=30, max_concurrent_lookups=2, lookup_wait_s=0.2)
    running = most = 0
    answer = asyncio.Event()

    async def slow() -> ProjectRecord | None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await answer.wait()
        running -= 1
        return None

    lookups = [asyncio.create_task(cache.get_or_load(f"pk_{n}", slow)) for n in range(6)]
    await asyncio.sleep(0.5)  # past lookup_wait_s: the four without a turn gave up
    answer.set()
    results = await asyncio.gather(*lookups, return_exceptions=True)
    assert most == 2
    assert [result is None for result in results].count(True) == 2
    assert [type(result) for result in results if result is not None] == [TimeoutError] * 4
