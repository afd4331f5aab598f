"""The replay player page: GET /player (and / redirects there), with its script and stylesheet.

Built from web/src by web/build.mjs into services/replay/static/ and committed (see docs/pages.md).
The query service's URL (for the link back to the dashboard) is written into the HTML as it is loaded.
"""

from __future__ import annotations

from pathlib import Path

from litestar.datastructures import State

from services.common.pages import page_handlers
from services.replay.settings import ReplaySettings

STATIC = Path(__file__).parent / "static"


def dashboard_url(state: State) -> str:
    settings: ReplaySettings = state.replay_settings
    return settings.dashboard_url


PAGE_HANDLERS = page_handlers("player", STATIC, "{{DASHBOARD_URL}}", dashboard_url)
