"""The dashboard and the player as a person uses them, in Chromium, on a seeded demo project.

What a screenshot would show, checked as numbers: the chart's buckets run from the range's
first day to now and no further, its y labels fit inside the canvas and are whole numbers,
nothing is wider than a 390 px phone screen, the player opens in view, a recording rrweb
cannot rebuild says so as an error, bots are left out of the list until asked for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from tests.e2e.browser import chromium, wait_for
from tests.e2e.conftest import PagesStack
from tests.e2e.demo_data import BOT_SESSION, BROKEN_SESSION, DemoProject, seed_demo_project
from tests.harness import DatabaseHarness

DESKTOP = (1440, 900)
PHONE = (390, 844)


@pytest.fixture(scope="module")
async def demo(db: DatabaseHarness, admin_engine: AsyncEngine) -> DemoProject:
    return await seed_demo_project(db.admin, admin_engine)


@pytest.fixture(scope="module")
def browser(db: DatabaseHarness, pages_stack: PagesStack) -> Iterator[Any]:
    with chromium(db.root / "log" / "chromedriver-usability.log") as driver:
        driver.set_window_size(*DESKTOP)
        yield driver


def open_with_key(driver: Any, url: str, key: str) -> None:
    driver.get(url)
    driver.execute_script("sessionStorage.clear()")
    driver.get(url)
    wait_for(driver, lambda d: d.find_element(By.ID, "key-input").is_displayed())
    driver.find_element(By.ID, "key-input").send_keys(key)
    driver.find_element(By.ID, "key-submit").click()


def dashboard_ready(driver: Any) -> bool:
    return bool(driver.find_element(By.ID, "dashboard-status").text.startswith("Updated"))


def chart_facts(driver: Any) -> dict[str, str]:
    facts: dict[str, str] = driver.execute_script("return {...document.getElementById('chart').dataset}")
    return facts


def widest_element(driver: Any) -> int:
    """The document's scroll width: wider than the window means something sticks out."""
    width: int = driver.execute_script("return document.documentElement.scrollWidth")
    return width


def test_the_chart_runs_from_the_first_day_to_today_with_whole_number_labels_inside_the_canvas(
    browser: Any, pages_stack: PagesStack, demo: DemoProject
) -> None:
    open_with_key(browser, f"{pages_stack.query_url}/dashboard", demo.secret_key)
    wait_for(browser, dashboard_ready, timeout_s=30)
    today = datetime.now(UTC).date()
    facts = chart_facts(browser)
    assert facts["buckets"] == "30"
    assert facts["firstBucket"] == f"{today - timedelta(days=29)}T00:00"
    assert facts["lastBucket"] == f"{today}T00:00"
    ticks = facts["yTicks"].split("|")
    assert ticks[0] == "0"
    assert all(tick.replace(",", "").isdigit() for tick in ticks), ticks
    # The axis is as wide as its widest label needs: nothing is clipped at the canvas edge.
    assert int(facts["yAxisWidth"]) >= int(facts["yLabelWidth"]), facts

    # Today: hours up to the current one, none still to come.
    browser.get(f"{pages_stack.query_url}/dashboard?period=today")
    wait_for(browser, dashboard_ready, timeout_s=30)
    facts = chart_facts(browser)
    now = datetime.now(UTC)
    assert facts["firstBucket"] == f"{now.date()}T00:00"
    assert facts["lastBucket"] == now.strftime("%Y-%m-%dT%H:00")
    assert facts["buckets"] == str(now.hour + 1)

    # Twelve months: twelve buckets, from the 1st of the month 11 months ago to this month.
    browser.get(f"{pages_stack.query_url}/dashboard?period=12mo")
    wait_for(browser, dashboard_ready, timeout_s=30)
    facts = chart_facts(browser)
    first_month = (today.year * 12 + today.month - 1) - 11
    assert facts["buckets"] == "12"
    assert facts["firstBucket"] == f"{first_month // 12}-{first_month % 12 + 1:02d}-01T00:00"
    assert facts["lastBucket"] == f"{today:%Y-%m}-01T00:00"


async def test_an_empty_project_has_an_axis_the_tracker_snippet_and_integer_ticks(
    browser: Any, db: DatabaseHarness, pages_stack: PagesStack
) -> None:
    empty = await admin.create_project(db.admin, name="empty-ui", domains=["example.com"], timezone="UTC")
    open_with_key(browser, f"{pages_stack.query_url}/dashboard", str(empty["secretKey"]))
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert browser.find_element(By.ID, "empty-state").is_displayed()
    assert "tracker.js" in browser.find_element(By.ID, "tracker-snippet").text
    facts = chart_facts(browser)
    assert facts["buckets"] == "30"
    assert facts["yTicks"].split("|") == ["0", "1", "2", "3", "4", "5"]


async def test_a_row_click_filters_everything_and_the_url_keeps_it(
    browser: Any, pages_stack: PagesStack, demo: DemoProject
) -> None:
    open_with_key(browser, f"{pages_stack.query_url}/dashboard?period=30d", demo.secret_key)
    wait_for(browser, dashboard_ready, timeout_s=30)
    all_pageviews = browser.find_element(By.CSS_SELECTOR, "[data-metric=Pageviews]").text
    rows = {
        row.find_element(By.CSS_SELECTOR, "button.row-filter").text: row
        for row in browser.find_elements(By.CSS_SELECTOR, "#pages-table tbody tr")
    }
    pricing_pageviews = rows["/pricing"].find_elements(By.CSS_SELECTOR, "td.number")[1].text
    rows["/pricing"].find_element(By.CSS_SELECTOR, "button.row-filter").click()
    wait_for(browser, lambda d: "f.page=%2Fpricing" in d.current_url)
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert browser.find_element(By.CSS_SELECTOR, ".chip[data-filter=page]").text.startswith("Page is /pricing")
    pageviews = browser.find_element(By.CSS_SELECTOR, "[data-metric=Pageviews]").text
    assert pageviews == pricing_pageviews

    # The chart metric, the comparison and a tab are in the URL too; a reload keeps them all.
    browser.find_element(By.CSS_SELECTOR, "button.total[data-total=pageviews]").click()
    browser.find_element(By.ID, "compare").click()
    browser.find_element(By.CSS_SELECTOR, "[data-tabs=sources] .tab[data-tab=utm_source]").click()
    wait_for(browser, lambda d: "tab.sources=utm_source" in d.current_url and "compare=1" in d.current_url)
    browser.refresh()
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert browser.find_element(By.ID, "chart-title").text == "Pageviews"
    assert browser.find_element(By.ID, "compare").is_selected()
    assert browser.find_element(By.CSS_SELECTOR, "[data-tab=utm_source]").get_attribute("aria-selected") == "true"
    assert browser.find_elements(By.CSS_SELECTOR, "[data-delta=pageviews]")
    assert chart_facts(browser)["yTicks"]

    # Removing the chip shows everything again.
    browser.find_element(By.CSS_SELECTOR, ".chip[data-filter=page] .chip-remove").click()
    wait_for(browser, lambda d: "f.page" not in d.current_url and dashboard_ready(d))
    assert browser.find_element(By.CSS_SELECTOR, "[data-metric=Pageviews]").text == all_pageviews


def test_the_default_funnel_follows_the_projects_own_top_pages(
    browser: Any, pages_stack: PagesStack, demo: DemoProject
) -> None:
    open_with_key(browser, f"{pages_stack.query_url}/dashboard", demo.secret_key)
    wait_for(browser, dashboard_ready, timeout_s=30)
    top = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#pages-table tbody button.row-filter")]
    assert browser.find_element(By.ID, "funnel-steps").get_attribute("value") == ", ".join(top[:3])
    steps = browser.find_elements(By.CSS_SELECTOR, "#funnel-result tbody tr")
    assert [row.text.split()[1] for row in steps] == top[:3]
    # A step nobody reached has no conversion: "-", not 0.0 %.
    browser.find_element(By.ID, "funnel-steps").clear()
    browser.find_element(By.ID, "funnel-steps").send_keys("/, /no-such-page")
    browser.find_element(By.CSS_SELECTOR, "#funnel-form button").click()
    wait_for(browser, lambda d: "/no-such-page" in d.find_element(By.ID, "funnel-result").text)
    last = browser.find_elements(By.CSS_SELECTOR, "#funnel-result tbody tr")[-1]
    assert last.find_elements(By.CSS_SELECTOR, "td")[2].text == "-"


def test_a_refused_key_costs_one_request_and_says_so_once(browser: Any, pages_stack: PagesStack) -> None:
    open_with_key(browser, f"{pages_stack.query_url}/dashboard", "sk_" + "x" * 40)
    wait_for(browser, lambda d: d.find_element(By.ID, "key-message").text)
    assert "refused" in browser.find_element(By.ID, "key-message").text

    def api_calls(driver: Any) -> list[str]:
        calls: list[str] = driver.execute_script(
            "return performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.includes('/v1/'))"
        )
        return calls

    # A fetch's timing entry is recorded when its response has ended, which can be after the
    # message (shown on the 401's headers): wait for it, then give any further call time to start.
    wait_for(browser, api_calls)
    time.sleep(1)
    assert len(api_calls(browser)) == 1, api_calls(browser)


def test_at_phone_width_nothing_is_wider_than_the_screen_and_the_chart_follows_the_window(
    browser: Any, pages_stack: PagesStack, demo: DemoProject
) -> None:
    open_with_key(browser, f"{pages_stack.query_url}/dashboard", demo.secret_key)
    wait_for(browser, dashboard_ready, timeout_s=30)
    wide = int(chart_facts(browser)["width"])
    browser.set_window_size(*PHONE)
    try:
        inner = browser.execute_script("return window.innerWidth")
        wait_for(browser, lambda d: int(chart_facts(d)["width"]) < inner)
        assert int(chart_facts(browser)["width"]) < wide
        assert widest_element(browser) <= inner
        browser.get(f"{pages_stack.replay_url}/player")
        if browser.find_elements(By.ID, "key-input") and browser.find_element(By.ID, "key-input").is_displayed():
            browser.find_element(By.ID, "key-input").send_keys(demo.secret_key)
            browser.find_element(By.ID, "key-submit").click()
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions-body button.play"))
        assert widest_element(browser) <= inner
        for play in browser.find_elements(By.CSS_SELECTOR, "#sessions-body button.play"):
            box = play.rect
            assert box["x"] >= 0, box
            assert box["x"] + box["width"] <= inner, box
    finally:
        browser.set_window_size(*DESKTOP)


def test_the_player_opens_in_view_beside_its_pages_and_metadata(
    browser: Any, pages_stack: PagesStack, demo: DemoProject
) -> None:
    open_with_key(browser, f"{pages_stack.replay_url}/player", demo.secret_key)
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sessions-body tr")) >= 4)
    rows = browser.find_elements(By.CSS_SELECTOR, "#sessions-body tr")
    listed = [row.get_attribute("data-session-id") for row in rows]
    # Bots are left out until asked for.
    assert listed == [*demo.session_ids]
    browser.find_element(By.CSS_SELECTOR, "#filters input[name=bots]").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#sessions-body tr[data-session-id='{BOT_SESSION}']"))
    assert "bots=include" in browser.current_url
    browser.find_element(By.CSS_SELECTOR, "#filters input[name=bots]").click()
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f"tr[data-session-id='{BOT_SESSION}']"))

    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    last = browser.find_elements(By.CSS_SELECTOR, "#sessions-body button.play")[0]
    browser.execute_script("arguments[0].click()", last)
    wait_for(browser, lambda d: d.find_element(By.ID, "player-status").text.startswith("Loaded"), timeout_s=30)
    top = browser.execute_script("return document.getElementById('player-section').getBoundingClientRect().top")
    assert 0 <= top < 200, "the player is in view"
    assert f"session={demo.session_ids[0]}" in browser.current_url
    meta = browser.find_element(By.ID, "player-meta").text
    assert "1 page\n" in meta + "\n"
    assert "Screen" in meta
    activity = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#activity li")]
    assert activity[0].split()[1:] == ["Page", "/"]
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline button.page")


def test_a_recording_rrweb_cannot_rebuild_is_an_error_not_a_player_at_zero(
    browser: Any, pages_stack: PagesStack, demo: DemoProject
) -> None:
    open_with_key(browser, f"{pages_stack.replay_url}/player?session={BROKEN_SESSION}", demo.secret_key)
    error = wait_for(browser, lambda d: d.find_element(By.ID, "player-error").text, timeout_s=30)
    assert error.startswith("This recording cannot be replayed")
    colour = browser.execute_script("return getComputedStyle(document.getElementById('player-error')).color")
    assert colour == "rgb(180, 35, 24)"


def test_a_failed_list_request_clears_the_rows_and_shows_an_error(
    browser: Any, pages_stack: PagesStack, demo: DemoProject
) -> None:
    open_with_key(browser, f"{pages_stack.replay_url}/player", demo.secret_key)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#sessions-body tr"))
    browser.execute_script("document.querySelector('#filters input[name=country]').value = 'DEU'")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_for(browser, lambda d: "error" in d.find_element(By.ID, "sessions-status").get_attribute("class"))
    assert browser.find_elements(By.CSS_SELECTOR, "#sessions-body tr") == []
    assert "HTTP 422" in browser.find_element(By.ID, "sessions-status").text
