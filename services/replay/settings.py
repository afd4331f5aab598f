"""The replay service's own settings, read from SIGHTLINE_REPLAY_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.settings import DEFAULT_PORTS, linked_service_url


@dataclass(frozen=True)
class ReplaySettings:
    # Where the player links back to: the query service's base URL as the browser reaches it
    # (SIGHTLINE_REPLAY_DASHBOARD_URL; default 127.0.0.1 on the query port).
    dashboard_url: str = f"http://127.0.0.1:{DEFAULT_PORTS['query']}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReplaySettings:
        return cls(dashboard_url=linked_service_url("query", "REPLAY_DASHBOARD_URL", environ))
