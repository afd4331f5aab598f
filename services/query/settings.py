"""The query service's own settings (rollups), read from SIGHTLINE_QUERY_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.common.settings import SettingsError


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    value = environ.get(f"SIGHTLINE_QUERY_{name}", "")
    if value == "":
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise SettingsError(f"SIGHTLINE_QUERY_{name} must be a number, got {value!r}") from exc


@dataclass(frozen=True)
class QuerySettings:
    # Read the per-day rollups where they answer a query; off means every query reads raw events.
    rollups: bool = True
    # A day whose events changed since its rollup was built is still read from the rollup for
    # this long after that build; later it is computed from events until rebuilt. This bounds
    # how stale a dashboard figure can be (the realtime endpoint always reads events).
    rollup_max_staleness_s: float = 60.0
    # How often each query worker looks for days to rebuild; 0 turns the background refresher
    # off (then `sightline rollup` must run).
    rollup_interval_s: float = 30.0
    # At most this share of the refresher's time is spent rebuilding: after a round that took
    # b seconds it waits at least b * (1 - share) / share. Rebuilding a day recomputes it from
    # its events, so a busy day costs more each round; this keeps that cost a bounded share
    # of a Postgres core (a day whose rebuild is spaced out past rollup_max_staleness_s is
    # read from events meanwhile, exact and slower).
    rollup_max_busy_share: float = 0.1
    # Days rebuilt per round, newest first, so one round stays short.
    rollup_days_per_round: int = 40
    # The realtime count reads the last 5 minutes of events (at the seed load, ~0.5 s of Postgres
    # CPU); every open dashboard polls it, so one answer per project is kept this long per worker.
    realtime_cache_s: float = 5.0
    # Where the dashboard page links for session recordings: the replay service's base URL as
    # the browser reaches it (SIGHTLINE_QUERY_REPLAY_URL; default 127.0.0.1 on the replay port).
    replay_url: str = "http://127.0.0.1:8003"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> QuerySettings:
        environ = os.environ if environ is None else environ
        return cls(
            rollups=environ.get("SIGHTLINE_QUERY_ROLLUPS", "on").lower() not in ("off", "0", "false", "no"),
            rollup_max_staleness_s=_number(environ, "ROLLUP_MAX_STALENESS_S", cls.rollup_max_staleness_s),
            rollup_interval_s=_number(environ, "ROLLUP_INTERVAL_S", cls.rollup_interval_s),
            rollup_max_busy_share=_number(environ, "ROLLUP_MAX_BUSY_SHARE", cls.rollup_max_busy_share),
            rollup_days_per_round=int(_number(environ, "ROLLUP_DAYS_PER_ROUND", cls.rollup_days_per_round)),
            realtime_cache_s=_number(environ, "REALTIME_CACHE_S", cls.realtime_cache_s),
            replay_url=_replay_url(environ),
        )


def _replay_url(environ: Mapping[str, str]) -> str:
    value = environ.get("SIGHTLINE_QUERY_REPLAY_URL", "").strip()
    if not value:
        return f"http://127.0.0.1:{environ.get('SIGHTLINE_REPLAY_PORT', '').strip() or 8003}"
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SettingsError(f"SIGHTLINE_QUERY_REPLAY_URL must be an http(s) URL, got {value!r}")
    return value.rstrip("/")
