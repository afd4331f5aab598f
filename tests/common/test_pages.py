"""The pages' HTML, scripts and styles as the replay and query services serve them (no browser)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from html import escape
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.common.api_reference import API_REFERENCE_POLICY
from services.common.pages import CONTENT_SECURITY_POLICY
from services.common.settings import SettingsError
from services.query.app import create_app as create_query_app
from services.query.settings import QuerySettings
from services.replay.app import create_app as create_replay_app
from services.replay.settings import ReplaySettings
from tests.harness import DatabaseHarness

REPLAY_URL = "https://replay.example.com:9443"
DASHBOARD_URL = "https://stats.example.com"


@pytest.fixture
async def replay(db: DatabaseHarness) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_replay_app(db.database, replay_settings=ReplaySettings(dashboard_url=DASHBOARD_URL))
    async with AsyncTestClient(app) as client:
        yield client


@pytest.fixture
async def query(db: DatabaseHarness) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = QuerySettings(rollup_interval_s=0, replay_url=REPLAY_URL)
    async with AsyncTestClient(create_query_app(db.database, query_settings=settings)) as client:
        yield client


@pytest.mark.parametrize(
    ("service", "page", "files"),
    [
        ("replay", "/player", ["/static/player.js", "/static/player.css"]),
        ("query", "/dashboard", ["/static/dashboard.js", "/static/dashboard.css"]),
    ],
)
async def test_a_page_and_its_files_are_public_with_the_policy_and_revalidate_by_etag(
    replay: AsyncTestClient[Any], query: AsyncTestClient[Any], service: str, page: str, files: list[str]
) -> None:
    client = replay if service == "replay" else query
    root = await client.get("/", follow_redirects=False)
    assert (root.status_code, root.headers["location"]) == (302, page)
    html = await client.get(page)
    assert html.status_code == 200
    assert html.headers["content-type"] == "text/html; charset=utf-8"
    assert html.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert html.headers["referrer-policy"] == "no-referrer"
    for path in files:
        assert f'"{path}"' in html.text
        asset = await client.get(path, headers={"accept-encoding": "gzip"})
        assert asset.status_code == 200
        assert asset.headers["content-encoding"] == "gzip"
        assert asset.headers["content-type"].startswith("text/javascript" if path.endswith(".js") else "text/css")
        again = await client.get(path, headers={"accept-encoding": "gzip", "if-none-match": asset.headers["etag"]})
        assert again.status_code == 304
        assert again.content == b""
    # The data is behind the key; the page itself never is.
    assert (await client.get("/v1/sessions" if service == "replay" else "/v1/realtime")).status_code == 401


async def test_the_dashboard_links_to_the_configured_replay_url(query: AsyncTestClient[Any]) -> None:
    html = (await query.get("/dashboard")).text
    assert f'<body data-replay-url="{REPLAY_URL}">' in html
    assert "{{" not in html


async def test_the_player_links_back_to_the_configured_dashboard_url(replay: AsyncTestClient[Any]) -> None:
    html = (await replay.get("/player")).text
    assert f'<body data-dashboard-url="{DASHBOARD_URL}">' in html
    assert "{{" not in html


@pytest.mark.parametrize(
    ("settings_class", "setting", "variable", "port_variable", "default_url"),
    [
        (
            ReplaySettings,
            "dashboard_url",
            "SIGHTLINE_REPLAY_DASHBOARD_URL",
            "SIGHTLINE_QUERY_PORT",
            "http://127.0.0.1:8002",
        ),
        (QuerySettings, "replay_url", "SIGHTLINE_QUERY_REPLAY_URL", "SIGHTLINE_REPLAY_PORT", "http://127.0.0.1:8003"),
    ],
)
def test_the_url_a_page_links_to_the_other_service_at(
    settings_class: Any, setting: str, variable: str, port_variable: str, default_url: str
) -> None:
    """The other service's default address and port, or the variable's URL without its trailing slash."""
    assert getattr(settings_class.from_env({}), setting) == default_url
    assert getattr(settings_class.from_env({port_variable: "9100"}), setting) == "http://127.0.0.1:9100"
    assert getattr(settings_class.from_env({variable: "https://other.example.com/"}), setting) == (
        "https://other.example.com"
    )
    with pytest.raises(SettingsError, match=variable):
        settings_class.from_env({variable: "javascript:alert(1)"})


def test_the_policy_keeps_a_recording_from_calling_out() -> None:
    directives = dict(directive.split(" ", 1) for directive in CONTENT_SECURITY_POLICY.split("; "))
    # Images, fonts, media and styles from the page itself (and what rrweb builds) only.
    assert directives["img-src"] == "'self' data: blob:"
    assert directives["font-src"] == "'self' data:"
    assert directives["media-src"] == "'self' data: blob:"
    assert directives["style-src"] == "'self' 'unsafe-inline'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"


@pytest.mark.parametrize("service", ["replay", "query"])
async def test_the_api_reference_runs_no_script_and_names_every_operation(
    replay: AsyncTestClient[Any], query: AsyncTestClient[Any], service: str
) -> None:
    client = replay if service == "replay" else query
    page = await client.get("/schema")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == API_REFERENCE_POLICY
    assert "script-src" not in API_REFERENCE_POLICY
    assert "default-src 'none'" in API_REFERENCE_POLICY
    # No script of any origin, no resource from another host: the key's origin runs nothing else.
    assert "<script" not in page.text.lower()
    assert "http://" not in page.text
    assert "https://" not in page.text.replace("https://example", "")
    document = (await client.get("/schema/openapi.json")).json()
    for path, item in document["paths"].items():
        for method in item:
            assert f"<span class='method'>{method}</span> <span class='path'>{escape(path)}</span>" in page.text
