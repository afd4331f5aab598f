"""Serving a service's browser page: its HTML, script and stylesheet, from memory.

The player (replay) and the dashboard (query) are public files without data: a page asks for
the project's secret key, keeps it in the tab's sessionStorage and sends it only as an
``Authorization`` header to its own origin's API. So nothing here needs a key, and no URL
ever carries one (access logs, Referer headers and history never see it).
"""

from __future__ import annotations

import gzip
import hashlib
import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.response import Redirect

from services.common.errors import ApiError

# Scripts, styles, images, fonts and media only from the page's own origin. The recorded
# pages rrweb rebuilds in the player's iframe (about:blank, which inherits this policy) carry
# their CSS as inline <style> elements, hence 'unsafe-inline' for styles (no script can run:
# script-src has no 'unsafe-inline'). Their images, fonts and media stay on the recorded site:
# a recording must not make the browser of whoever plays it call out to other hosts (which
# would tell them who watches, and when), so those are blocked and the replay shows gaps
# where they were. data: and blob: are what rrweb itself builds (inlined images, canvas).
# connect-src 'self': the pages talk to their own service only; links to the other page
# are plain navigations.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "media-src 'self' data: blob:",
        "connect-src 'self'",
        "frame-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Unversioned URLs: the browser revalidates every time, and the ETag makes that a 304.
    "Cache-Control": "no-cache",
}

# Litestar adds "; charset=utf-8" to text types.
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


@dataclass(frozen=True)
class PageFile:
    plain: bytes
    gzipped: bytes
    etag: str
    media_type: str


@cache
def load_page_file(path: Path, replacements: tuple[tuple[str, str], ...] = ()) -> PageFile:
    """Reads a page file once per process; replacements fill placeholders in the HTML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ApiError(
            404, "page_not_built", f"{path.name} is missing: build it with `make pages` (see docs/pages.md)."
        ) from exc
    for placeholder, value in replacements:
        text = text.replace(placeholder, value)
    plain = text.encode()
    # mtime=0: the same file always compresses to the same bytes in every process.
    return PageFile(
        plain,
        gzip.compress(plain, mtime=0),
        f'"{hashlib.sha256(plain).hexdigest()[:32]}"',
        MEDIA_TYPES[path.suffix],
    )


def accepts_gzip(accept_encoding: str) -> bool:
    for coding in accept_encoding.lower().split(","):
        name, _, params = coding.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def page_file_response(
    request: Request[Any, Any, Any], page_file: PageFile, extra_headers: Mapping[str, str] | None = None
) -> Response[bytes]:
    use_gzip = accepts_gzip(request.headers.get("accept-encoding", ""))
    # Each encoding is its own representation and so has its own strong ETag.
    etag = page_file.etag[:-1] + '-gzip"' if use_gzip else page_file.etag
    headers = {**PAGE_HEADERS, **(extra_headers or {}), "ETag": etag, "Vary": "Accept-Encoding"}
    if_none_match = request.headers.get("if-none-match", "")
    if etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(",")) or if_none_match.strip() == "*":
        return Response(b"", status_code=304, headers=headers, media_type=page_file.media_type)
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    return Response(
        page_file.gzipped if use_gzip else page_file.plain, headers=headers, media_type=page_file.media_type
    )


def redirect_root_to(page_path: str) -> HTTPRouteHandler:
    """GET /: a redirect to the service's page."""

    @get("/", include_in_schema=False)
    async def root() -> Redirect:
        return Redirect(page_path, status_code=302)

    return root


def page_file_handler(path: str, file: Path) -> HTTPRouteHandler:
    """GET path: a built page file served as it is (a script, a stylesheet, HTML without placeholders)."""

    @get(path, include_in_schema=False)
    async def page_file(request: Request[Any, Any, Any]) -> Response[bytes]:
        return page_file_response(request, load_page_file(file))

    return page_file


def page_handlers(
    name: str, static: Path, placeholder: str, linked_url: Callable[[State], str]
) -> list[HTTPRouteHandler]:
    """A service's page: GET /{name} (and / redirects there) with its script and stylesheet, all
    built into `static`; the HTML's `placeholder` is the other service's page URL, from the state."""

    @get(f"/{name}", include_in_schema=False)
    async def page(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
        replacements = ((placeholder, html.escape(linked_url(state), quote=True)),)
        return page_file_response(request, load_page_file(static / f"{name}.html", replacements))

    return [
        redirect_root_to(f"/{name}"),
        page,
        page_file_handler(f"/static/{name}.js", static / f"{name}.js"),
        page_file_handler(f"/static/{name}.css", static / f"{name}.css"),
    ]
