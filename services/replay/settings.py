"""The replay service's own settings, read from SIGHTLINE_REPLAY_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.common.settings import DEFAULT_PORTS, SettingsError


@dataclass(frozen=True)
class ReplaySettings:
    # Where the player links back to: the query service's base URL as the browser reaches it
    # (SIGHTLINE_REPLAY_DASHBOARD_URL; default 127.0.0.1 on the query port).
    dashboard_url: str = f"http://127.0.0.1:{DEFAULT_PORTS['query']}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReplaySettings:
        environ = os.environ if environ is None else environ
        value = environ.get("SIGHTLINE_REPLAY_DASHBOARD_URL", "").strip()
        if not value:
            port = environ.get("SIGHTLINE_QUERY_PORT", "").strip() or DEFAULT_PORTS["query"]
            return cls(dashboard_url=f"http://127.0.0.1:{port}")
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SettingsError(f"SIGHTLINE_REPLAY_DASHBOARD_URL must be an http(s) URL, got {value!r}")
        return cls(dashboard_url=value.rstrip("/"))
