"""The load generator talks to this machine only: a load test aimed elsewhere is an attack."""

from __future__ import annotations

from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"


class NotLoopbackError(ValueError):
    pass


def require_loopback(url: str) -> str:
    """Returns the URL without a trailing slash if its host is 127.0.0.1; raises otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname != LOOPBACK:
        raise NotLoopbackError(f"the load test only targets http://{LOOPBACK}:<port>, not {url!r}")
    # userinfo could smuggle a different host past a naive check in some clients
    if "@" in parts.netloc:
        raise NotLoopbackError(f"the load test URL must not carry credentials: {url!r}")
    return url.rstrip("/")
