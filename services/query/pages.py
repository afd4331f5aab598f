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
from litestar.response import Redirect

from services.common.pages import load_page_file, page_file_response
from services.query.settings import QuerySettings

STATIC = Path(__file__).parent / "static"


@get("/", include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/dashboard", status_code=302)


@get("/dashboard", include_in_schema=False)
async def dashboard_page(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    settings: QuerySettings = state.query_settings
    replacements = (("{{REPLAY_URL}}", html.escape(settings.replay_url, quote=True)),)
    return page_file_response(request, load_page_file(STATIC / "dashboard.html", replacements))


@get("/static/dashboard.js", include_in_schema=False)
async def dashboard_script(request: Request[Any, Any, Any]) -> Response[bytes]:
    return page_file_response(request, load_page_file(STATIC / "dashboard.js"))


@get("/static/dashboard.css", include_in_schema=False)
async def dashboard_styles(request: Request[Any, Any, Any]) -> Response[bytes]:
    return page_file_response(request, load_page_file(STATIC / "dashboard.css"))


PAGE_HANDLERS = [root, dashboard_page, dashboard_script, dashboard_styles]
