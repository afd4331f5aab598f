"""Records three real sessions with Chromium and the tracker, saved as replay payloads for the load test.

`make capture-recordings` (or `python -m tests.e2e.capture_recordings`): starts a throwaway
Postgres + PgBouncer and ingest, visits each page of tests/e2e/recording_pages.py (scrolls,
clicks, types), reads back the chunks ingest stored, and writes
tools/loadtest/recordings/<page>.json.gz (the load test's first replay chunks). The format is
described in docs/tracker.md.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from services.cli import admin
from services.cli.serving import running_service
from services.common.db import create_admin_engine
from tests.e2e import recording_pages
from tests.e2e.browser import chromium, desktop_user_agent, tracker_ready, wait_for
from tests.e2e.recording_store import chunk_events, poll, stored_chunks, stored_session
from tests.e2e.site import serve_site, tracker_tag
from tests.harness import DatabaseHarness, start_database_harness
from tools.loadtest.payloads import RECORDINGS_DIR


def _pause() -> None:
    # Actions spread over the visit, as a person's are, so the recording spans several chunks.
    time.sleep(1.2)


def _hover(driver: Any, element: Any) -> None:
    ActionChains(driver).move_to_element(element).pause(0.3).move_by_offset(40, 10).perform()


def _act_on_article(driver: Any) -> int:
    for _ in range(5):
        driver.execute_script("window.scrollBy({top: 700, behavior: 'smooth'})")
        _pause()
    link = driver.find_element(By.CSS_SELECTOR, ".toc a")
    driver.execute_script("window.scrollTo(0, 0)")
    _hover(driver, link)
    link.click()
    _pause()
    driver.find_element(By.ID, "name").send_keys("Ada Lovelace")
    _pause()
    driver.find_element(By.ID, "comment").send_keys("Lovely notes, thank you.")
    _pause()
    driver.find_element(By.ID, "post").click()
    return 2


def _act_on_catalogue(driver: Any) -> int:
    driver.find_element(By.ID, "search").send_keys("anvil")
    _pause()
    for box in driver.find_elements(By.CSS_SELECTOR, "aside input")[:3]:
        _hover(driver, box)
        box.click()
        _pause()
    for button in driver.find_elements(By.CSS_SELECTOR, ".add")[:12:3]:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        _hover(driver, button)
        button.click()
        _pause()
    return 7


def _act_on_dashboard(driver: Any) -> int:
    for _ in range(4):
        driver.execute_script("window.scrollBy(0, 800)")
        _pause()
    settings = driver.find_element(By.ID, "tab-settings")
    _hover(driver, settings)
    settings.click()
    _pause()
    driver.find_element(By.ID, "shop-name").send_keys("Anvils & Co")
    _pause()
    driver.find_element(By.ID, "support").send_keys("help@anvils.test")
    _pause()
    driver.find_element(By.ID, "token").send_keys("tok_live_123456")
    _pause()
    driver.find_element(By.ID, "tab-orders").click()
    return 2


VISITS: dict[str, tuple[str, Callable[[str], str], Callable[[Any], int]]] = {
    "article": (
        "A long blog post: scrolling, a table-of-contents jump, a comment typed",
        recording_pages.article,
        _act_on_article,
    ),
    "catalogue": (
        "A shop grid of 260 products: search typed, filters ticked, items added",
        recording_pages.catalogue,
        _act_on_catalogue,
    ),
    "dashboard": (
        "An admin table of 380 orders: scrolling, a tab switch, a settings form typed",
        recording_pages.dashboard,
        _act_on_dashboard,
    ),
}


async def capture(db: DatabaseHarness, ingest_url: str) -> list[tuple[str, int, int, int]]:
    project = await admin.create_project(db.admin, name="recordings", domains=["127.0.0.1"], timezone="UTC")
    admin_engine = create_admin_engine(db.admin)
    sizes = []
    try:
        for name, (description, make_page, act) in VISITS.items():
            pages = {"/": make_page(tracker_tag(ingest_url, str(project["publicKey"]))), "/bye": "<p>bye</p>"}
            with serve_site(pages) as site, chromium(db.root / "log" / f"chromedriver-{name}.log") as driver:
                driver.get(f"{site}/")
                wait_for(driver, tracker_ready)
                session_id = driver.execute_script("return JSON.parse(localStorage.getItem('sightline_session')).id")
                clicks = act(driver)
                driver.get(f"{site}/bye")
                # The same origin's storage says how many chunks the tracker numbered.
                numbered = driver.execute_script("return JSON.parse(localStorage.getItem('sightline_session')).nextSeq")

                async def flushed(session_id: str = session_id, numbered: int = numbered, clicks: int = clicks) -> bool:
                    chunks = await stored_chunks(admin_engine, project["id"], session_id)
                    session = await stored_session(admin_engine, project["id"], session_id)
                    return len(chunks) >= numbered and session is not None and session.click_count >= clicks

                await poll(flushed, what=f"the {name} recording")
                chunks = await stored_chunks(admin_engine, project["id"], session_id)
            recording = {
                "page": name,
                "description": description,
                "browser": desktop_user_agent(),
                "capturedAt": datetime.now(UTC).isoformat(timespec="seconds"),
                "chunks": [{"seq": chunk.seq, "events": chunk_events(chunk)} for chunk in chunks],
            }
            path = RECORDINGS_DIR / f"{name}.json.gz"
            path.write_bytes(gzip.compress(json.dumps(recording, separators=(",", ":")).encode(), mtime=0))
            first = chunks[0]
            sizes.append((name, len(chunks), first.byte_size, sum(chunk.byte_size for chunk in chunks)))
    finally:
        await admin_engine.dispose()
    return sizes


def main() -> None:
    RECORDINGS_DIR.mkdir(exist_ok=True)
    with start_database_harness() as db:
        env = {**os.environ, "SIGHTLINE_DATABASE_URL": db.database.url, "SIGHTLINE_INGEST_WORKERS": "1"}
        with running_service("ingest", env, db.root / "log" / "ingest-capture.log") as ingest:
            sizes = asyncio.run(capture(db, ingest.url))
    print("| recording | chunks | first chunk, gzip as sent | all chunks, gzip as sent |")
    print("| --- | --- | --- | --- |")
    for name, count, first_bytes, total_bytes in sizes:
        print(f"| `{name}.json.gz` | {count} | {first_bytes / 1000:.1f} kB | {total_bytes / 1000:.1f} kB |")


if __name__ == "__main__":
    main()
