"""The dashboard page: GET /dashboard (and / redirects there), with its script and stylesheet.

Built from web/src by web/build.mjs into services/query/static/ and committed (see docs/pages.md).
The replay service's URL (for links to the player) is written into the HTML as it is loaded.
"""

from __future__ import annotations

from pathlib import Path

from litestar.datastructures import State

from services.common.pages import page_handlers
from services.query.settings import QuerySettings

STATIC = Path(__file__).parent / "static"


def replay_url(state: State) -> str:
    settings: QuerySettings = state.query_settings
    return settings.replay_url


PAGE_HANDLERS = page_handlers("dashboard", STATIC, "{{REPLAY_URL}}", replay_url)
