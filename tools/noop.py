"""The benchmark-only no-op endpoint: on only when ingest runs with SIGHTLINE_INGEST_BENCHMARK_NOOP=1."""

from __future__ import annotations

import urllib.error
import urllib.request

NOOP_SETTING = "SIGHTLINE_INGEST_BENCHMARK_NOOP"


def require_noop_endpoint(ingest_url: str) -> None:
    """Exit with instructions unless the ingest at ingest_url serves POST /v1/noop."""
    request = urllib.request.Request(
        f"{ingest_url}/v1/noop", data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            return
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            return
    raise SystemExit(
        f"{ingest_url} has no POST /v1/noop: start the stack with it on, e.g. `make down && {NOOP_SETTING}=1 make up`"
    )
