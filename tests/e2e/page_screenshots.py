"""Screenshots of every state of the dashboard and the player, for a reviewer who does not set up.

`make screenshots` (or `python -m tests.e2e.page_screenshots [DIR]`, default reports/screenshots):
starts a throwaway Postgres + PgBouncer with the query and replay services under Granian,
seeds a demo project (tests/e2e/demo_data.py), the same again with its days rolled up (so
visitors are estimates, marked "≈") and an empty one, opens each page state in
Chromium at 1440x900 and at 390x844 (a phone) and writes one PNG per state and width.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By

from services.cli import admin
from services.common.db import create_admin_engine
from services.query.tasks import refresh_until_current
from tests.e2e.browser import chromium, wait_for
from tests.e2e.demo_data import BROKEN_SESSION, seed_demo_project
from tests.harness import DatabaseHarness, start_database_harness

DESKTOP = (1440, 900)
PHONE = (390, 844)
SERVICE_SETTINGS = {"REPLAY_WORKERS": "1", "QUERY_WORKERS": "1", "QUERY_ROLLUP_INTERVAL_S": "0"}


def enter_key(driver: Any, secret_key: str) -> None:
    wait_for(driver, lambda d: d.find_element(By.ID, "key-input").is_displayed())
    driver.find_element(By.ID, "key-input").send_keys(secret_key)
    driver.find_element(By.ID, "key-submit").click()


def dashboard_loaded(driver: Any) -> bool:
    status = driver.find_element(By.ID, "dashboard-status").text
    return bool(status.startswith("Updated"))


def set_window(driver: Any, size: tuple[int, int]) -> None:
    # The window's inner size is what a page lays out for; Chromium's outer size adds nothing
    # in headless mode.
    driver.set_window_size(*size)


def full_page(driver: Any, path: Path) -> None:
    """The whole page, not only the viewport: the window is made as tall as the document."""
    width = driver.execute_script("return window.innerWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    original = driver.get_window_size()
    driver.set_window_size(original["width"], max(original["height"], min(height + 40, 6000)))
    driver.save_screenshot(str(path))
    driver.set_window_size(original["width"], original["height"])
    print(f"wrote {path} ({width} px wide)")


def capture(driver: Any, url: str, key: str, path: Path, ready: Callable[[Any], object], *, whole: bool = True) -> None:
    driver.get(url)
    if driver.execute_script("return !sessionStorage.getItem('sightline_secret_key')"):
        enter_key(driver, key)
    wait_for(driver, ready, timeout_s=30)
    driver.execute_script("return new Promise((resolve) => setTimeout(resolve, 600))")
    if whole:
        full_page(driver, path)
    else:
        driver.save_screenshot(str(path))
        print(f"wrote {path}")


async def write_screenshots(db: DatabaseHarness, out: Path) -> None:
    engine = create_admin_engine(db.admin)
    try:
        demo = await seed_demo_project(db.admin, engine)
        empty = await admin.create_project(db.admin, name="empty-project", domains=["example.com"], timezone="UTC")
        # The same traffic again, its days rolled up: visitors are HyperLogLog estimates there ("≈").
        rolled_up = await seed_demo_project(db.admin, engine)
        await refresh_until_current(engine, 100, rolled_up.project_id)
    finally:
        await engine.dispose()
    out.mkdir(parents=True, exist_ok=True)
    with db.serve("replay", "replay-screens", **SERVICE_SETTINGS) as replay:
        query_service = db.serve("query", "query-screens", **SERVICE_SETTINGS, QUERY_REPLAY_URL=replay.url)
        with query_service as query, chromium(db.root / "log" / "chromedriver-screens.log") as driver:
            dashboard = f"{query.url}/dashboard"
            player = f"{replay.url}/player"
            for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
                set_window(driver, size)
                states = [
                    ("dashboard-30d", f"{dashboard}", dashboard_loaded),
                    ("dashboard-today", f"{dashboard}?period=today", dashboard_loaded),
                    ("dashboard-12mo-compare", f"{dashboard}?period=12mo&compare=1", dashboard_loaded),
                    (
                        "dashboard-filtered-pageviews",
                        f"{dashboard}?period=7d&compare=1&metric=pageviews&f.page=%2Fpricing&tab.sources=utm_source",
                        dashboard_loaded,
                    ),
                    # Goals under a filter: conversions among the visits from one source.
                    ("dashboard-goals-filtered", f"{dashboard}?f.referrer=google.com", dashboard_loaded),
                ]
                for name, url, ready in states:
                    capture(driver, url, demo.secret_key, out / f"{name}-{label}.png", ready)
                driver.execute_script("sessionStorage.clear()")
                capture(
                    driver, dashboard, rolled_up.secret_key, out / f"dashboard-estimated-{label}.png", dashboard_loaded
                )
                driver.execute_script("sessionStorage.clear()")
                empty_key = str(empty["secretKey"])
                capture(driver, dashboard, empty_key, out / f"dashboard-empty-{label}.png", dashboard_loaded)
                driver.execute_script("sessionStorage.clear()")
                capture(
                    driver,
                    dashboard,
                    "sk_" + "x" * 40,
                    out / f"dashboard-refused-key-{label}.png",
                    lambda d: d.find_element(By.ID, "key-message").text,
                )
                driver.execute_script("sessionStorage.clear()")

                def listed(d: Any) -> bool:
                    return bool(d.find_elements(By.CSS_SELECTOR, "#sessions-body tr"))

                capture(driver, player, demo.secret_key, out / f"player-list-{label}.png", listed)
                capture(
                    driver,
                    f"{player}?session={demo.session_ids[0]}",
                    demo.secret_key,
                    out / f"player-playing-{label}.png",
                    lambda d: d.find_element(By.ID, "player-status").text.startswith("Loaded"),
                    whole=False,
                )
                # From the dashboard's "Sessions" link of a source, and a session's referrer and UTM tags.
                capture(
                    driver,
                    f"{player}?referrer=news.ycombinator.com",
                    demo.secret_key,
                    out / f"player-filtered-source-{label}.png",
                    listed,
                )
                capture(
                    driver,
                    f"{player}?utmSource=newsletter&session=recorded-catalogue",
                    demo.secret_key,
                    out / f"player-referrer-metadata-{label}.png",
                    lambda d: d.find_element(By.ID, "player-status").text.startswith("Loaded"),
                )
                capture(
                    driver,
                    f"{player}?session={BROKEN_SESSION}",
                    demo.secret_key,
                    out / f"player-broken-recording-{label}.png",
                    lambda d: d.find_element(By.ID, "player-error").text,
                    whole=False,
                )
                capture(
                    driver,
                    f"{player}?country=DEU",
                    demo.secret_key,
                    out / f"player-list-error-{label}.png",
                    lambda d: "error" in d.find_element(By.ID, "sessions-status").get_attribute("class"),
                )
                driver.execute_script("sessionStorage.clear()")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/screenshots")
    with start_database_harness() as db:
        asyncio.run(write_screenshots(db, out))


if __name__ == "__main__":
    main()
