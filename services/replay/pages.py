"""The replay player page: GET /player (and / redirects there), with its script and stylesheet.

Built from web/src by web/build.mjs into services/replay/static/ and committed (see docs/pages.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.response import Redirect

from services.common.pages import load_page_file, page_file_response

STATIC = Path(__file__).parent / "static"


@get("/", include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/player", status_code=302)


@get("/player", include_in_schema=False)
async def player_page(request: Request[Any, Any, Any]) -> Response[bytes]:
    return page_file_response(request, load_page_file(STATIC / "player.html"))


@get("/static/player.js", include_in_schema=False)
async def player_script(request: Request[Any, Any, Any]) -> Response[bytes]:
    return page_file_response(request, load_page_file(STATIC / "player.js"))


@get("/static/player.css", include_in_schema=False)
async def player_styles(request: Request[Any, Any, Any]) -> Response[bytes]:
    return page_file_response(request, load_page_file(STATIC / "player.css"))


PAGE_HANDLERS = [root, player_page, player_script, player_styles]
