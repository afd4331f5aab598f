"""The player (replay service) and the dashboard (query service) in a real Chromium.

A visit is recorded once by the tracker on the test site (home page with typing, then the
pricing page); then the pages are opened, the secret key is typed into their key form, and
what they show is checked: the recorded page inside rrweb-player's iframe, the visited paths
in the dashboard's top pages. The key must never appear in a URL the browser loaded nor in
the services' logs, and the typed text never in the recording.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.common.pages import CONTENT_SECURITY_POLICY
from tests.e2e.browser import chromium, console_problems, tracker_ready, wait_for
from tests.e2e.conftest import PagesStack
from tests.e2e.recording_store import chunk_json, poll, stored_chunks, stored_events
from tests.e2e.screenshots import colour_census
from tests.e2e.site import read_page, serve_site, tracker_tag
from tests.harness import DatabaseHarness

TYPED_SECRET = "tiger-lily-typed-in-the-form"
HOME_HEADING = "Welcome to Acme"
PRICING_HEADING = "Pricing"

# The iframe rrweb-player rebuilds the recorded page in; it is same-origin (about:blank).
IFRAME_TEXT = (
    "const frame = document.querySelector('#player .replayer-wrapper iframe');"
    "const body = frame && frame.contentDocument && frame.contentDocument.body;"
    "return body ? body.innerText : '';"
)


@dataclass(frozen=True)
class RecordedVisit:
    project_id: int
    secret_key: str
    session_id: str
    chunk_count: int


@pytest.fixture(scope="module")
async def recorded_visit(db: DatabaseHarness, ingest_url: str, admin_engine: AsyncEngine) -> RecordedVisit:
    project = await admin.create_project(
        db.admin, name=f"pages-{uuid.uuid4().hex[:8]}", domains=["127.0.0.1"], timezone="UTC"
    )
    project_id = int(str(project["id"]))
    tag = tracker_tag(ingest_url, str(project["publicKey"]))
    pages = {
        "/": read_page("home.html", tag),
        "/pricing": read_page("pricing.html", tag),
        "/bye": "<!doctype html><title>Elsewhere</title><p>No tracker here.</p>",
    }
    with serve_site(pages) as site, chromium(db.root / "log" / "chromedriver-pages-visit.log") as driver:
        driver.get(f"{site}/")
        wait_for(driver, tracker_ready)
        session_id = driver.execute_script("return JSON.parse(localStorage.getItem('sightline_session')).id")
        driver.find_element(By.ID, "email").send_keys(TYPED_SECRET)

        async def first_chunk_stored() -> bool:
            return bool(await stored_chunks(admin_engine, project_id, session_id))

        # The home page stays on screen for the first 5-second chunk, so the replay shows it
        # for that long before the pricing page.
        await poll(first_chunk_stored, what="the first replay chunk")
        driver.find_element(By.ID, "to-pricing").click()
        wait_for(driver, lambda d: d.current_url == f"{site}/pricing" and tracker_ready(d))
        driver.get(f"{site}/bye")
        chunks_numbered = driver.execute_script("return JSON.parse(localStorage.getItem('sightline_session')).nextSeq")

        async def everything_stored() -> bool:
            chunks = await stored_chunks(admin_engine, project_id, session_id)
            return len(chunks) >= chunks_numbered and len(await stored_events(admin_engine, project_id)) >= 2

        await poll(everything_stored, what="the pagehide flush")
    return RecordedVisit(project_id, str(project["secretKey"]), session_id, chunks_numbered)


def enter_key(driver: Any, secret_key: str) -> None:
    wait_for(driver, lambda d: d.find_element(By.ID, "key-input").is_displayed())
    driver.find_element(By.ID, "key-input").send_keys(secret_key)
    driver.find_element(By.ID, "key-submit").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "app").is_displayed())


def loaded_urls(driver: Any) -> list[str]:
    """Every URL this document loaded: itself and each resource and fetch."""
    urls: list[str] = driver.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map((entry) => entry.name)]"
    )
    return urls


def assert_key_nowhere(secret_key: str, urls: list[str], log_paths: tuple[Path, ...]) -> None:
    assert urls, "no URL was collected"
    for url in urls:
        assert secret_key not in url
    for path in log_paths:
        assert secret_key not in path.read_text(errors="replace"), path.name
    # Nor a recognisable part of it (the key's random part, URL-encoded or not).
    for path in log_paths:
        assert secret_key.removeprefix("sk_")[:16] not in path.read_text(errors="replace"), path.name


def fetch(url: str, secret_key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if secret_key:
        request.add_header("Authorization", f"Bearer {secret_key}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, {name.lower(): value for name, value in response.headers.items()}, response.read()


def test_the_pages_are_public_html_without_data_and_with_a_script_policy(pages_stack: PagesStack) -> None:
    for url, marker in (
        (f"{pages_stack.replay_url}/player", b"player.js"),
        (f"{pages_stack.query_url}/dashboard", b"dashboard.js"),
    ):
        status, headers, body = fetch(url)
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in headers["content-security-policy"]
        assert marker in body
        assert b"<script>" not in body, "inline scripts would not run under the policy"
    _, _, dashboard = fetch(f"{pages_stack.query_url}/dashboard")
    assert f'data-replay-url="{pages_stack.replay_url}"'.encode() in dashboard


async def test_the_player_plays_the_recorded_visit_from_the_start_and_from_a_later_second(
    db: DatabaseHarness,
    pages_stack: PagesStack,
    recorded_visit: RecordedVisit,
    admin_engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    key = recorded_visit.secret_key
    with chromium(db.root / "log" / "chromedriver-player.log") as driver:
        driver.get(f"{pages_stack.replay_url}/player")
        enter_key(driver, key)
        row = f"#sessions-body tr[data-session-id='{recorded_visit.session_id}']"
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, row))
        assert len(driver.find_elements(By.CSS_SELECTOR, "#sessions-body tr")) == 1, "one session in this project"
        driver.find_element(By.CSS_SELECTOR, f"{row} button.play").click()

        # Played from the start: the home page's heading, inside the player's iframe.
        wait_for(driver, lambda d: HOME_HEADING in d.execute_script(IFRAME_TEXT))
        frame_text = driver.execute_script(IFRAME_TEXT)
        assert TYPED_SECRET not in frame_text
        typed_value = driver.execute_script(
            "return document.querySelector('#player iframe').contentDocument.getElementById('email').value"
        )
        # Playback may be halfway through the typing (each keystroke is an input event): a prefix
        # of the mask, never a character of the secret.
        assert set(typed_value) <= {"*"}, f"the replayed input shows the masked value at most, not {typed_value!r}"
        assert len(typed_value) <= len(TYPED_SECRET)

        driver.save_screenshot(str(tmp_path / "player-page.png"))
        screenshot = tmp_path / "player.png"
        frame = driver.find_element(By.CSS_SELECTOR, "#player .replayer-wrapper iframe")
        frame.screenshot(str(screenshot))
        census = colour_census(screenshot.read_bytes())
        pixels = sum(census.values())
        background = census.most_common(1)[0][1]
        # Not blank: text, borders and the input draw in more than a few colours, over a few
        # hundred pixels at least.
        assert len(census) >= 10, f"{len(census)} colours in {screenshot}"
        assert pixels - background >= 500, f"only {pixels - background} non-background pixels in {screenshot}"

        # Loading from a second asks the API for that window (from/to): the recording then
        # starts at the pricing page's full snapshot, recorded at the end of the session.
        duration_s = int(driver.find_element(By.ID, "seek-seconds").get_attribute("max"))
        seek = driver.find_element(By.ID, "seek-seconds")
        seek.clear()
        seek.send_keys(str(duration_s))
        driver.find_element(By.ID, "until-seconds").send_keys(str(duration_s + 60))
        driver.find_element(By.CSS_SELECTOR, "#seek-form button").click()
        wait_for(driver, lambda d: PRICING_HEADING in d.execute_script(IFRAME_TEXT))
        # The stream began at the pricing page's chunk, not at the session's start (the home
        # page filled the first 5-second chunk): the player says where its events begin.
        status = wait_for(driver, lambda d: d.find_element(By.ID, "player-status").text.startswith("Loaded:") and d)
        loaded_from = status.find_element(By.ID, "player-status").text
        assert re.search(r"from [1-9]\d* s on", loaded_from), loaded_from
        recording_fetches = [url for url in loaded_urls(driver) if "/recording" in url]
        assert recording_fetches[0].endswith(f"/v1/sessions/{recorded_visit.session_id}/recording?")
        assert recording_fetches[-1].endswith(f"/recording?from={duration_s * 1000}&to={(duration_s + 60) * 1000}")
        urls = loaded_urls(driver)
        assert console_problems(driver) == []

    assert_key_nowhere(key, urls, pages_stack.log_paths)
    # The typed text is in no stored chunk and in nothing the replay API serves.
    chunks = await stored_chunks(admin_engine, recorded_visit.project_id, recorded_visit.session_id)
    assert len(chunks) == recorded_visit.chunk_count
    for chunk in chunks:
        assert TYPED_SECRET.encode() not in chunk_json(chunk)
    status, _, recording = fetch(f"{pages_stack.replay_url}/v1/sessions/{recorded_visit.session_id}/recording", key)
    assert status == 200
    lines = [json.loads(line) for line in recording.splitlines()]
    assert [line["seq"] for line in lines] == list(range(recorded_visit.chunk_count))
    assert TYPED_SECRET.encode() not in recording
    assert TYPED_SECRET[:9].encode() not in recording


def test_the_dashboard_shows_the_visited_paths_a_chart_and_links_to_the_player(
    db: DatabaseHarness, pages_stack: PagesStack, recorded_visit: RecordedVisit, tmp_path: Path
) -> None:
    key = recorded_visit.secret_key
    with chromium(db.root / "log" / "chromedriver-dashboard.log") as driver:
        driver.get(f"{pages_stack.query_url}/dashboard")
        enter_key(driver, key)
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#pages-table tbody tr td.url"))
        top_pages = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#pages-table tbody tr td.url")]
        assert sorted(top_pages) == ["/", "/pricing"]

        canvas = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart canvas"))[0]
        assert canvas.size["width"] > 300
        assert canvas.size["height"] > 100
        wait_for(driver, lambda d: d.find_elements(By.ID, "realtime-visitors"))
        assert driver.find_element(By.ID, "realtime-visitors").text == "1"
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#funnel-result tbody tr"))
        funnel = [row.text for row in driver.find_elements(By.CSS_SELECTOR, "#funnel-result tbody tr")]
        # The default funnel is the project's top pages (here both with one visitor).
        assert sorted(line.split()[1:3] for line in funnel) == [["/", "1"], ["/pricing", "1"]]
        totals = {
            element.get_attribute("data-metric"): element.text
            for element in driver.find_elements(By.CSS_SELECTOR, "#totals strong")
        }
        assert (totals["Visitors"], totals["Pageviews"]) == ("1", "2")

        links = {
            row.find_element(By.CSS_SELECTOR, "td.url").text: row.find_element(By.CSS_SELECTOR, "a.sessions-link")
            for row in driver.find_elements(By.CSS_SELECTOR, "#pages-table tbody tr")
        }
        href = links["/pricing"].get_attribute("href")
        assert href == f"{pages_stack.replay_url}/player?page=%2Fpricing"
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        dashboard_urls = loaded_urls(driver)
        assert console_problems(driver) == []

        # The player is another origin: it has no key of its own yet and asks for it; the
        # filter from the link is applied once the key is in.
        links["/pricing"].click()
        wait_for(driver, lambda d: d.current_url == href)
        enter_key(driver, key)
        row = f"#sessions-body tr[data-session-id='{recorded_visit.session_id}']"
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, row))
        assert driver.find_element(By.CSS_SELECTOR, "#filters input[name=page]").get_attribute("value") == ("/pricing")
        player_urls = loaded_urls(driver)

    assert_key_nowhere(key, dashboard_urls + player_urls, pages_stack.log_paths)
