"""Per-project token buckets: a flooding project gets 429s, the others are not slowed.

Buckets live in each worker process (no shared state, so services stay stateless and
any number of replicas can run); the limit a project sees across the deployment is the
per-process rate times the number of worker processes behind the load balancer.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.common.errors import ApiError


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


class RateLimited(ApiError):
    def __init__(self, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(
            429,
            "rate_limited",
            f"This project is sending faster than its limit; retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )


class TokenBuckets:
    """``rate_per_s`` tokens a second per key, up to ``burst`` saved; a disabled limiter has rate 0."""

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        self._rate = rate_per_s
        self._burst = max(burst, 1.0)
        self._max_keys = max_keys
        self._buckets: OrderedDict[int | str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def take(self, key: int | str, cost: float = 1.0) -> None:
        """Spends cost tokens of key's bucket, or raises RateLimited with the wait until it could."""
        if not self.enabled:
            return
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=self._burst, updated_at=now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated_at) * self._rate)
            bucket.updated_at = now
            self._buckets.move_to_end(key)
        # A request larger than the whole burst is let through once the bucket is full,
        # rather than never.
        cost = min(cost, self._burst)
        if bucket.tokens < cost:
            raise RateLimited((cost - bucket.tokens) / self._rate)
        bucket.tokens -= cost


@dataclass
class _Balance:
    units: float
    updated_at: float


class CostBuckets:
    """A work budget per key: ``rate_per_s`` units a second, up to ``burst`` saved, charged by actual cost.

    Unlike TokenBuckets, the cost of a request is often known only once some of its work is done
    (a body's events are counted after it is inflated and skimmed), so a key is let in while its
    balance holds a unit and charged afterwards what the request actually cost: the balance may
    go below zero, and the key is refused until the refill has repaid it. Over time a key gets
    ``rate_per_s`` units a second whatever its requests' sizes, and a refused request costs only
    the check. At most ``max_keys`` keys are kept (least recently charged first out): memory stays
    bounded however many keys an attacker makes up, and a key pushed out starts again with a full
    burst, so the table must be larger than the keys that are in debt at once. Per process, like
    TokenBuckets: services keep no shared state.
    """

    def __init__(
        self, rate_per_s: float, burst: float, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate_per_s
        self._burst = max(burst, 1.0)
        self._max_keys = max(max_keys, 1)
        self._clock = clock
        self._balances: OrderedDict[int | str, _Balance] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def __len__(self) -> int:
        return len(self._balances)

    def wait_s(self, key: int | str) -> float | None:
        """None while key may go on (a unit or more left); else the seconds until it has a unit again."""
        if not self.enabled:
            return None
        balance = self._balances.get(key)
        if balance is None:
            return None
        units = self._refilled(balance, self._clock())
        return None if units >= 1 else (1 - units) / self._rate

    def charge(self, key: int | str, cost: float) -> None:
        if not self.enabled:
            return
        now = self._clock()
        balance = self._balances.get(key)
        if balance is None:
            balance = self._balances[key] = _Balance(units=self._burst, updated_at=now)
            if len(self._balances) > self._max_keys:
                self._balances.popitem(last=False)
        else:
            balance.units = self._refilled(balance, now)
            balance.updated_at = now
            self._balances.move_to_end(key)
        balance.units -= cost

    def _refilled(self, balance: _Balance, now: float) -> float:
        return min(self._burst, balance.units + (now - balance.updated_at) * self._rate)
