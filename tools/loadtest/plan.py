"""What one load-test run does, passed from `sightline load` to the Locust processes by environment."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from tools.loadtest.hosts import require_loopback

Shape = Literal["linear", "steps"]

# The seed's tracker flushes every 5 seconds.
PACING_S = 5.0
# A dashboard or replay viewer per 500 visitors, and 5 % of users posting to the no-op endpoint:
# enough requests for a stable no-op p95 without changing the load much.
VISITORS_PER_READER = 500
NOOP_SHARE = 0.05
# In the run folder: the payload pools, built once by the runner and read by every Locust process.
PAYLOADS_FILE = "payloads.msgpack"


@dataclass(frozen=True, kw_only=True)
class Traffic:
    """How many visitors, how they ramp, and which services they reach (loopback only)."""

    users: int
    ramp_up_s: float
    hold_s: float
    ramp_down_s: float
    ingest_url: str
    query_url: str
    replay_url: str
    shape: Shape = "linear"
    steps: int = 5
    # The fault run's timeline: every request (time, latency, status) and every acknowledged row's key.
    record_timeline: bool = False
    # Every visitor posts the no-op body to /v1/noop: what the generator alone adds (docs/load-testing.md).
    noop_only: bool = False

    def traffic(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(Traffic)}

    def __post_init__(self) -> None:
        for url in (self.ingest_url, self.query_url, self.replay_url):
            require_loopback(url)
        if self.users < 1:
            raise ValueError("users must be at least 1")


@dataclass(frozen=True, kw_only=True)
class LoadPlan(Traffic):
    """A run as the Locust processes read it: the traffic, the demo project's keys, the run folder."""

    project_key: str
    secret_key: str
    run_dir: str
    pacing_s: float = PACING_S
    visitors_per_reader: int = VISITORS_PER_READER
    noop_share: float = NOOP_SHARE

    @property
    def readers(self) -> int:
        return max(1, self.users // self.visitors_per_reader)

    @property
    def noop_users(self) -> int:
        return max(1, math.ceil(self.users * self.noop_share))

    @property
    def locust_users(self) -> int:
        """`users` are tracker visitors, as in the seed's test; readers and no-op users come on top."""
        return self.users + self.readers + self.noop_users

    @property
    def total_s(self) -> float:
        return self.ramp_up_s + self.hold_s + self.ramp_down_s

    def to_env(self) -> dict[str, str]:
        return {f"SIGHTLINE_LOAD_{name.upper()}": str(value) for name, value in asdict(self).items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoadPlan:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = env.get(f"SIGHTLINE_LOAD_{field.name.upper()}")
            if raw is None:
                continue
            kind = field.type if isinstance(field.type, str) else field.type.__name__
            if kind == "bool":
                values[field.name] = raw == "True"
            else:
                values[field.name] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
        return cls(**values)  # type: ignore[arg-type]
