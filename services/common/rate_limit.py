"""Per-project token buckets: a flooding project gets 429s, the others are not slowed.

Buckets live in each worker process (no shared state, so services stay stateless and
any number of replicas can run); the limit a project sees across the deployment is the
per-process rate times the number of worker processes behind the load balancer.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
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
