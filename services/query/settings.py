"""The query service's own settings (rollups), read from SIGHTLINE_QUERY_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from services.common.settings import linked_service_url, load_settings, setting


@dataclass(frozen=True)
class QuerySettings:
    # Read the per-day rollups where they answer a query; off means every query reads raw events.
    rollups: bool = setting("ROLLUPS", True)
    # A day whose events changed since its rollup was built is still read from the rollup for
    # this long after that build; later it is computed from events until rebuilt. This bounds
    # how stale a dashboard figure can be (the realtime endpoint always reads events).
    rollup_max_staleness_s: float = setting("ROLLUP_MAX_STALENESS_S", 60.0)
    # How often each query worker looks for days to rebuild; 0 turns the background refresher
    # off (then `sightline rollup` must run).
    rollup_interval_s: float = setting("ROLLUP_INTERVAL_S", 30.0)
    # At most this share of the refresher's time is spent rebuilding: after a round that spent
    # b seconds rebuilding (days, weeks, retention weeks; merging is not counted: it costs in
    # proportion to what arrived, so waiting saves nothing) it waits at least
    # b * (1 - share) / share. Rebuilding a day recomputes it from
    # its events, so a busy day costs more each round; this keeps that cost a bounded share
    # of a Postgres core (a day whose rebuild is spaced out past rollup_max_staleness_s is
    # read from events meanwhile, exact and slower).
    rollup_max_busy_share: float = setting("ROLLUP_MAX_BUSY_SHARE", 0.1)
    # Days rebuilt per round, newest first, so one round stays short.
    rollup_days_per_round: int = setting("ROLLUP_DAYS_PER_ROUND", 40)
    # The realtime count reads the last 5 minutes of events (at the seed load, ~0.5 s of Postgres
    # CPU); every open dashboard polls it, so one answer per project is kept this long per worker.
    realtime_cache_s: float = setting("REALTIME_CACHE_S", 5.0)
    # A funnel with `sampling: "auto"` (POST /v1/funnel) follows every visitor when the range holds
    # at most this many non-bot events (the exact read scans them all, about 1 µs each); else it
    # follows a visitor sample (1/8, 1/16, ... 1/512, migration 0780): the least sampling whose
    # share of the step events is at most funnel_sample_max_step_events (the sampled read visits
    # those alone). At 10M events the bench's funnels read 15-20k sampled step events (1/256):
    # 36-49 ms p50 (docs/benchmarks.md, "Funnels from a visitor sample").
    funnel_exact_max_events: int = setting("FUNNEL_EXACT_MAX_EVENTS", 100_000)
    funnel_sample_max_step_events: int = setting("FUNNEL_SAMPLE_MAX_STEP_EVENTS", 25_000)
    # Where the dashboard page links for session recordings: the replay service's base URL as
    # the browser reaches it (SIGHTLINE_QUERY_REPLAY_URL; default 127.0.0.1 on the replay port).
    replay_url: str = "http://127.0.0.1:8003"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> QuerySettings:
        settings = load_settings(cls, "query", environ)
        return replace(settings, replay_url=linked_service_url("replay", "QUERY_REPLAY_URL", environ))
