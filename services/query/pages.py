"""The dashboard page: GET /dashboard (and / redirects there), with its script and stylesheet.

Built from web/src by web/build.mjs into services/query/static/ and committed (see docs/pages.md).
The replay service's URL (for links to the player) is written into the HTML as it is loaded.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from services.common.pages import load_page_file, page_file_handler, page_file_response, redirect_root_to
from services.query.settings import QuerySettings

STATIC = Path(__file__).parent / "static"


@get("/dashboard", include_in_schema=False)
async def dashboard_page(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    settings: QuerySettings = state.query_settings
    replacements = (("{{REPLAY_URL}}", html.escape(settings.replay_url, quote=True)),)
    return page_file_response(request, load_page_file(STATIC / "dashboard.html", replacements))


PAGE_HANDLERS = [
    redirect_root_to("/dashboard"),
    dashboard_page,
    page_file_handler("/static/dashboard.js", STATIC / "dashboard.js"),
    page_file_handler("/static/dashboard.css", STATIC / "dashboard.css"),
]
