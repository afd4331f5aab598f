"""GET /tracker.js: the browser tracker, built from tracker/ into services/ingest/static/.

Sites embed it with a plain script tag, so no CORS is needed. The bundle is read once per
process and served from memory, gzip-compressed for clients that accept it (about a third
of its size), with an ETag so a revalidation costs a 304.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from litestar import Request, Response, get

from services.common.errors import ApiError
from services.common.pages import accepts_gzip

TRACKER_BUNDLE = Path(__file__).parent / "static" / "tracker.js"
# The URL in sites' script tags carries no version, so a long cache would keep an old
# tracker in browsers for that long; an hour bounds that, and the ETag makes the check cheap.
CACHE_CONTROL = "public, max-age=3600"


@dataclass(frozen=True)
class TrackerScript:
    plain: bytes
    gzipped: bytes
    etag: str

    @property
    def gzip_etag(self) -> str:
        # Each encoding is its own representation and so has its own strong ETag.
        return self.etag[:-1] + '-gzip"'


@cache
def load_tracker_script(path: Path = TRACKER_BUNDLE) -> TrackerScript:
    try:
        plain = path.read_bytes()
    except FileNotFoundError as exc:
        raise ApiError(
            404, "tracker_not_built", f"{path.name} is missing: build it with `make tracker` (see docs/tracker.md)."
        ) from exc
    # mtime=0: the same bundle always compresses to the same bytes in every process.
    return TrackerScript(plain, gzip.compress(plain, mtime=0), f'"{hashlib.sha256(plain).hexdigest()[:32]}"')


@get(
    "/tracker.js",
    summary="The browser tracker script",
    description=(
        'Embed with `<script src="<ingest>/tracker.js" data-project-key="pk_..." defer></script>`; '
        "it sends to the origin it was loaded from. See docs/tracker.md."
    ),
    tags=["tracker"],
    media_type="text/javascript",
)
async def get_tracker_script(request: Request[Any, Any, Any]) -> Response[bytes]:
    script = load_tracker_script()
    use_gzip = accepts_gzip(request.headers.get("accept-encoding", ""))
    etag = script.gzip_etag if use_gzip else script.etag
    headers = {
        "Cache-Control": CACHE_CONTROL,
        "ETag": etag,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if_none_match = request.headers.get("if-none-match", "")
    if etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(",")) or if_none_match.strip() == "*":
        return Response(b"", status_code=304, headers=headers)
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    return Response(script.gzipped if use_gzip else script.plain, headers=headers)
