"""The replay player page: GET /player (and / redirects there), with its script and stylesheet.

Built from web/src by web/build.mjs into services/replay/static/ and committed (see docs/pages.md).
The query service's URL (for the link back to the dashboard) is written into the HTML as it is loaded.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from services.common.pages import load_page_file, page_file_handler, page_file_response, redirect_root_to
from services.replay.settings import ReplaySettings

STATIC = Path(__file__).parent / "static"


@get("/player", include_in_schema=False)
async def player_page(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    settings: ReplaySettings = state.replay_settings
    replacements = (("{{DASHBOARD_URL}}", html.escape(settings.dashboard_url, quote=True)),)
    return page_file_response(request, load_page_file(STATIC / "player.html", replacements))


PAGE_HANDLERS = [
    redirect_root_to("/player"),
    player_page,
    page_file_handler("/static/player.js", STATIC / "player.js"),
    page_file_handler("/static/player.css", STATIC / "player.css"),
]
