"""The replay player page: GET /player (and / redirects there), with its script and stylesheet.

Built from web/src by web/build.mjs into services/replay/static/ and committed (see docs/pages.md).
"""

from __future__ import annotations

from pathlib import Path

from services.common.pages import page_file_handler, redirect_root_to

STATIC = Path(__file__).parent / "static"

PAGE_HANDLERS = [
    redirect_root_to("/player"),
    page_file_handler("/player", STATIC / "player.html"),
    page_file_handler("/static/player.js", STATIC / "player.js"),
    page_file_handler("/static/player.css", STATIC / "player.css"),
]
