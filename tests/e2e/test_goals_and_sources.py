"""Goals, the "≈" estimate marks, the player's source filters and metadata, in Chromium at 1440 and 390 px.

- Goals are saved per project from the dashboard's form and shown with their unique visitors
  and conversion rate (hand-computed below), follow the dashboard's filters, and are deleted
  with their x.
- "≈" marks exactly the figures that are HyperLogLog estimates: visitors (and goal figures)
  read from rolled-up days, and nothing on a project read from raw events.
- A dashboard row's "Sessions" link lands in the player filtered by that page, source or UTM
  tag (with the dashboard's other filters the player has), and the player shows the visit's
  referrer and UTM tags beside the recording.
Nothing is wider than the window at either width.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.query.tasks import refresh_until_current
from tests.e2e.browser import chromium, console_problems, wait_for
from tests.e2e.conftest import PagesStack
from tests.e2e.demo_data import DemoProject, seed_demo_project
from tests.harness import DatabaseHarness
from tests.query.conftest import Event, insert_events

DESKTOP = (1440, 900)
PHONE = (390, 844)
SIZES = pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1440px", "390px"])


@pytest.fixture(scope="module")
async def demo(db: DatabaseHarness, admin_engine: AsyncEngine) -> DemoProject:
    return await seed_demo_project(db.admin, admin_engine)


@pytest.fixture(scope="module")
def browser(db: DatabaseHarness, pages_stack: PagesStack) -> Iterator[Any]:
    with chromium(db.root / "log" / "chromedriver-goals-sources.log") as driver:
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


def fits_the_window(driver: Any) -> bool:
    inner: int = driver.execute_script("return window.innerWidth")
    widest: int = driver.execute_script("return document.documentElement.scrollWidth")
    return widest <= inner


async def small_project(db: DatabaseHarness, engine: AsyncEngine, *, days_ago: int) -> dict[str, Any]:
    """Four visitors on one day: g1 came from google.com, saw / and /pricing and signed up there; g2 saw /
    and /pricing; g3 saw /; g4 saw /blog. So /pricing converts 2 of 4 (50 %), signup 1 of 4 (25 %)."""
    project = await admin.create_project(
        db.admin, name=f"goals-{uuid.uuid4().hex[:8]}", domains=["example.com"], timezone="UTC"
    )
    day = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=days_ago)
    events = [
        Event("g1", "gs1", day, "/", referrer_domain="google.com"),
        Event("g1", "gs1", day + timedelta(minutes=1), "/pricing"),
        Event("g1", "gs1", day + timedelta(minutes=2), "/pricing", name="signup"),
        Event("g2", "gs2", day + timedelta(hours=1), "/"),
        Event("g2", "gs2", day + timedelta(hours=1, minutes=1), "/pricing"),
        Event("g3", "gs3", day + timedelta(hours=2), "/"),
        Event("g4", "gs4", day + timedelta(hours=3), "/blog"),
    ]
    await insert_events(engine, int(project["id"]), events)
    return project


def goal_rows(driver: Any) -> dict[str, tuple[str, str, str]]:
    """Each goal's row by its value: (name, uniques, conversion rate); read in one go, as the card redraws."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll('#goals-table tbody tr')].map((row) => [row.dataset.goal,"
        " row.querySelector('button.row-filter').textContent,"
        " ...[...row.querySelectorAll('td.number')].map((cell) => cell.textContent)]);"
    )
    return {value: (name, uniques, rate) for value, name, uniques, rate in rows}


def add_goal(driver: Any, kind: str, value: str, name: str = "") -> None:
    Select(driver.find_element(By.ID, "goal-type")).select_by_value(kind)
    driver.find_element(By.ID, "goal-value").send_keys(value)
    if name:
        driver.find_element(By.ID, "goal-name").send_keys(name)
    driver.find_element(By.CSS_SELECTOR, "#goal-form button[type=submit]").click()


@SIZES
async def test_goals_are_saved_shown_with_conversions_filtered_and_deleted(
    browser: Any, db: DatabaseHarness, engine: AsyncEngine, pages_stack: PagesStack, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    project = await small_project(db, engine, days_ago=1)
    open_with_key(browser, f"{pages_stack.query_url}/dashboard", str(project["secretKey"]))
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert browser.find_element(By.ID, "goals-table").text.startswith("No goals yet")

    add_goal(browser, "page", "/pricing")
    wait_for(browser, lambda d: "/pricing" in goal_rows(d))
    add_goal(browser, "event", "signup", "Signed up")
    wait_for(browser, lambda d: "signup" in goal_rows(d))
    assert goal_rows(browser) == {"/pricing": ("/pricing", "2", "50.0 %"), "signup": ("Signed up", "1", "25.0 %")}
    # The same goal twice is refused, and says why.
    add_goal(browser, "page", "/pricing")
    message = wait_for(browser, lambda d: d.find_element(By.ID, "goal-message").text)
    assert "already has" in message
    assert "HTTP 409" in message
    assert fits_the_window(browser)

    # Saved for the project: a reload (a fresh page) shows them again, in the order added.
    browser.refresh()
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert list(goal_rows(browser)) == ["/pricing", "signup"]

    # A goal's name filters the dashboard; its figures follow: of the 2 visitors on /pricing,
    # both reached /pricing and 1 signed up.
    browser.find_element(By.CSS_SELECTOR, "#goals-table tr[data-goal='/pricing'] button.row-filter").click()
    wait_for(browser, lambda d: "f.page=%2Fpricing" in d.current_url)
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert goal_rows(browser) == {"/pricing": ("/pricing", "2", "100.0 %"), "signup": ("Signed up", "1", "50.0 %")}

    browser.find_element(By.CSS_SELECTOR, "#goals-table tr[data-goal='signup'] button.goal-remove").click()
    wait_for(browser, lambda d: list(goal_rows(d)) == ["/pricing"])
    browser.refresh()
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert list(goal_rows(browser)) == ["/pricing"]
    assert fits_the_window(browser)
    # Chromium logs the refused duplicate's 409 as a failed resource; nothing else may be there.
    problems = [
        problem for problem in console_problems(browser) if "/v1/goals - " not in problem or "409" not in problem
    ]
    assert problems == []


# Every text holding "≈" in the dashboard, described by where it is: a total by its metric, a
# table cell by its card and column header, anything else (the notes) by its nearest id.
ESTIMATE_MARKS = """
const found = [];
const walker = document.createTreeWalker(document.getElementById('app'), NodeFilter.SHOW_TEXT);
while (walker.nextNode()) {
  const node = walker.currentNode;
  if (!node.nodeValue.includes('\u2248') || !node.parentElement.offsetParent) continue;
  const parent = node.parentElement;
  const total = parent.closest('[data-metric]');
  const cell = parent.closest('td');
  if (total) found.push(`total:${total.dataset.metric}`);
  else if (cell) {
    const column = [...cell.parentElement.children].indexOf(cell);
    const header = cell.closest('table').querySelectorAll('thead th')[column].textContent;
    found.push(`${cell.closest('[id]').id}:${header}`);
  } else found.push(`note:${parent.closest('[id]').id}`);
}
return [...new Set(found)].sort();
"""


@SIZES
async def test_the_estimate_mark_is_where_and_only_where_a_figure_is_estimated(
    browser: Any, db: DatabaseHarness, engine: AsyncEngine, pages_stack: PagesStack, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    # The same traffic twice: one project read from raw events (exact), one from rollups.
    exact = await small_project(db, engine, days_ago=3)
    estimated = await small_project(db, engine, days_ago=3)
    await refresh_until_current(engine, 100, int(estimated["id"]))
    for project in (exact, estimated):
        await save_goal(engine, project)

    open_with_key(browser, f"{pages_stack.query_url}/dashboard", str(exact["secretKey"]))
    wait_for(browser, dashboard_ready, timeout_s=30)
    wait_for(browser, lambda d: goal_rows(d))
    assert browser.execute_script(ESTIMATE_MARKS) == []
    assert browser.find_element(By.ID, "totals-note").text == ""

    open_with_key(browser, f"{pages_stack.query_url}/dashboard", str(estimated["secretKey"]))
    wait_for(browser, dashboard_ready, timeout_s=30)
    wait_for(browser, lambda d: goal_rows(d))
    # Visitors wherever they come from rollups, and the notes that explain the mark; never
    # pageviews, sessions, rates or durations, nor the funnel and retention (raw events).
    assert browser.execute_script(ESTIMATE_MARKS) == sorted(
        [
            "total:Visitors",
            "note:totals-note",
            "note:chart-note",
            "pages-table:Visitors",
            "note:pages-table",
            "sources-table:Visitors",
            "note:sources-table",
            "locations-table:Visitors",
            "note:locations-table",
            "devices-table:Visitors",
            "note:devices-table",
            "events-table:Visitors",
            "note:events-table",
            "goals-table:Uniques",
            "goals-table:Conversion rate",
            "note:goals-table",
        ]
    )
    # The figures themselves are the exact ones (HyperLogLog is exact at these counts).
    assert browser.find_element(By.CSS_SELECTOR, "[data-metric=Visitors]").text == "\u22484"
    assert goal_rows(browser) == {"/pricing": ("/pricing", "\u22482", "\u224850.0 %")}
    assert "HyperLogLog" in browser.find_element(By.ID, "totals-note").text
    # Charting pageviews (exact) drops the chart's note.
    browser.find_element(By.CSS_SELECTOR, "button.total[data-total=pageviews]").click()
    wait_for(browser, dashboard_ready, timeout_s=30)
    wait_for(browser, lambda d: "note:chart-note" not in d.execute_script(ESTIMATE_MARKS))
    assert browser.find_element(By.ID, "chart-note").text == ""
    assert fits_the_window(browser)


def custom_event_rows(driver: Any) -> list[list[str]]:
    """The Custom events card's rows: event name, visitors, events."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll('#events-table tbody tr')].map((row) =>"
        " [...row.querySelectorAll('td')].map((cell) => cell.textContent));"
    )
    return rows


@SIZES
async def test_goals_under_a_filter_chip_are_read_from_the_rollups(
    browser: Any, db: DatabaseHarness, engine: AsyncEngine, pages_stack: PagesStack, size: tuple[int, int]
) -> None:
    """Under a visit filter chip the Goals card's figures are those of the visits it keeps, from
    the event-name rows of that dimension (migration 0770): small_project's g1 came from
    google.com (saw /pricing, signed up), g2, g3 and g4 came direct (g2 saw /pricing)."""
    browser.set_window_size(*size)
    project = await small_project(db, engine, days_ago=2)
    await refresh_until_current(engine, 100, int(project["id"]))
    await save_goal(engine, project)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO query_goals (project_id, goal_id, name, kind, value)"
                " VALUES (:project_id, :goal_id, 'Signed up', 'event', 'signup')"
            ),
            {"project_id": project["id"], "goal_id": uuid.uuid4()},
        )
    # The event goals' query under each chip is answered by the event-name rollup.
    for value in ("google.com", None):
        body = {
            "period": "7d",
            "metrics": ["visitors"],
            "dimensions": ["event_name"],
            "filters": [
                {"dimension": "referrer", "operator": "is", "values": [value]},
                {"dimension": "event_name", "operator": "is", "values": ["signup"]},
            ],
        }
        async with httpx.AsyncClient(base_url=pages_stack.query_url) as client:
            response = await client.post(
                "/v1/query", json=body, headers={"Authorization": f"Bearer {project['secretKey']}"}
            )
        assert response.json()["meta"]["source"] == "rollups", response.text

    dashboard = f"{pages_stack.query_url}/dashboard"
    open_with_key(browser, f"{dashboard}?period=7d&f.referrer=google.com", str(project["secretKey"]))
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert browser.find_element(By.CSS_SELECTOR, "#filter-chips [data-filter=referrer]").text.startswith(
        "Source is google.com"
    )
    assert goal_rows(browser) == {
        "/pricing": ("/pricing", "\u22481", "\u2248100.0 %"),
        "signup": ("Signed up", "\u22481", "\u2248100.0 %"),
    }
    assert custom_event_rows(browser) == [["signup", "\u22481", "1"]]

    # Direct visits only ("" in the URL: the chip's value is none): g2, g3 and g4.
    browser.get(f"{dashboard}?period=7d&f.referrer=")
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert browser.find_element(By.CSS_SELECTOR, "#filter-chips [data-filter=referrer]").text.startswith(
        "Source is (none)"
    )
    assert goal_rows(browser) == {
        "/pricing": ("/pricing", "\u22481", "\u224833.3 %"),
        "signup": ("Signed up", "\u22480", "\u22480.0 %"),
    }
    assert custom_event_rows(browser) == [["No data in this period."]]
    assert fits_the_window(browser)
    assert console_problems(browser) == []


@SIZES
async def test_goals_under_a_page_entry_or_event_chip_are_read_from_the_rollups(
    browser: Any, db: DatabaseHarness, engine: AsyncEngine, pages_stack: PagesStack, size: tuple[int, int]
) -> None:
    """Under a page, entry-page or event chip the Goals and Custom events cards count the events
    that match the chip, from the event rows per (event name, page) and per entry page (migration
    0810): small_project's g1 (entered on /) saw /pricing and signed up on it, g2 (entered on /)
    saw /pricing, g3 (/) and g4 (/blog) did neither."""
    browser.set_window_size(*size)
    project = await small_project(db, engine, days_ago=2)
    await refresh_until_current(engine, 100, int(project["id"]))
    await save_goal(engine, project)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO query_goals (project_id, goal_id, name, kind, value)"
                " VALUES (:project_id, :goal_id, 'Signed up', 'event', 'signup')"
            ),
            {"project_id": project["id"], "goal_id": uuid.uuid4()},
        )
    # The goals' queries under each chip are answered from the rollups.
    for chip, value in (("page", "/pricing"), ("entry_page", "/"), ("event_name", "signup")):
        for dimension, goal in (("event_name", "signup"), ("page", "/pricing")):
            body = {
                "period": "7d",
                "metrics": ["visitors"],
                "dimensions": [dimension],
                "filters": [
                    {"dimension": chip, "operator": "is", "values": [value]},
                    {"dimension": dimension, "operator": "is", "values": [goal]},
                ],
            }
            async with httpx.AsyncClient(base_url=pages_stack.query_url) as client:
                response = await client.post(
                    "/v1/query", json=body, headers={"Authorization": f"Bearer {project['secretKey']}"}
                )
            assert response.json()["meta"]["source"] == "rollups", (chip, dimension, response.text)

    dashboard = f"{pages_stack.query_url}/dashboard"
    # g1 and g2 saw /pricing; only g1's signup was an event on it.
    open_with_key(browser, f"{dashboard}?period=7d&f.page=%2Fpricing", str(project["secretKey"]))
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert goal_rows(browser) == {
        "/pricing": ("/pricing", "\u22482", "\u2248100.0 %"),
        "signup": ("Signed up", "\u22481", "\u224850.0 %"),
    }
    assert custom_event_rows(browser) == [["signup", "\u22481", "1"]]
    # g1, g2 and g3 entered on /.
    browser.get(f"{dashboard}?period=7d&f.entry_page=%2F")
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert goal_rows(browser) == {
        "/pricing": ("/pricing", "\u22482", "\u224866.7 %"),
        "signup": ("Signed up", "\u22481", "\u224833.3 %"),
    }
    assert custom_event_rows(browser) == [["signup", "\u22481", "1"]]
    # The visitors who signed up (g1): her signup was on /pricing.
    browser.get(f"{dashboard}?period=7d&f.event_name=signup")
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert goal_rows(browser) == {
        "/pricing": ("/pricing", "\u22481", "\u2248100.0 %"),
        "signup": ("Signed up", "\u22481", "\u2248100.0 %"),
    }
    assert fits_the_window(browser)
    assert console_problems(browser) == []


@SIZES
async def test_goals_under_an_exit_page_chip_or_two_visit_chips(
    browser: Any, db: DatabaseHarness, engine: AsyncEngine, pages_stack: PagesStack, size: tuple[int, int]
) -> None:
    """The shapes no cube holds (migration 0850 answers them from the session days): small_project's
    g1 and g2 left from /pricing (g1 signed up there), g3 left from /, g4 from /blog; only g1 came
    from google.com, and every visitor is on Chrome in DE."""
    browser.set_window_size(*size)
    project = await small_project(db, engine, days_ago=2)
    await refresh_until_current(engine, 100, int(project["id"]))
    await save_goal(engine, project)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO query_goals (project_id, goal_id, name, kind, value)"
                " VALUES (:project_id, :goal_id, 'Signed up', 'event', 'signup')"
            ),
            {"project_id": project["id"], "goal_id": uuid.uuid4()},
        )

    def figures(driver: Any) -> dict[str, tuple[str, str]]:
        # Whether a figure carries the estimate mark is test_the_estimate_mark_...'s concern.
        return {
            value: (uniques.lstrip("\u2248"), rate.lstrip("\u2248"))
            for value, (_, uniques, rate) in goal_rows(driver).items()
        }

    dashboard = f"{pages_stack.query_url}/dashboard"
    open_with_key(browser, f"{dashboard}?period=7d&f.exit_page=%2Fpricing", str(project["secretKey"]))
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert browser.find_element(By.CSS_SELECTOR, "#filter-chips [data-filter=exit_page]").is_displayed()
    # g1 and g2 left from /pricing: both saw it, g1 signed up.
    assert figures(browser) == {"/pricing": ("2", "100.0 %"), "signup": ("1", "50.0 %")}
    assert [[cell.lstrip("\u2248") for cell in row] for row in custom_event_rows(browser)] == [["signup", "1", "1"]]

    # Two visit chips: google.com and Chrome keep g1 alone.
    browser.get(f"{dashboard}?period=7d&f.referrer=google.com&f.browser=Chrome")
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert figures(browser) == {"/pricing": ("1", "100.0 %"), "signup": ("1", "100.0 %")}
    # Direct visits in DE: g2 (saw /pricing), g3 and g4.
    browser.get(f"{dashboard}?period=7d&f.referrer=&f.country=DE")
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert figures(browser) == {"/pricing": ("1", "33.3 %"), "signup": ("0", "0.0 %")}
    assert fits_the_window(browser)
    assert console_problems(browser) == []


async def save_goal(engine: AsyncEngine, project: dict[str, Any]) -> None:
    """The page goal /pricing, as the dashboard's form saves it (POST /v1/goals)."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO query_goals (project_id, goal_id, name, kind, value)"
                " VALUES (:project_id, :goal_id, '/pricing', 'page', '/pricing')"
            ),
            {"project_id": project["id"], "goal_id": uuid.uuid4()},
        )


def listed_sessions(driver: Any) -> list[str]:
    ids: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#sessions-body tr')].map((row) => row.dataset.sessionId)"
    )
    return ids


def sessions_link(driver: Any, card: str, value: str) -> str:
    for row in driver.find_elements(By.CSS_SELECTOR, f"#{card}-table tbody tr"):
        if row.find_element(By.CSS_SELECTOR, "button.row-filter").text == value:
            href: str = row.find_element(By.CSS_SELECTOR, "a.sessions-link").get_attribute("href")
            return href
    raise AssertionError(f"no row {value!r} in {card}")


def follow_to_player(driver: Any, href: str, key: str) -> None:
    driver.get(href)
    # The player is another origin: it asks for the key once per tab.
    if driver.find_element(By.ID, "key-input").is_displayed():
        driver.find_element(By.ID, "key-input").send_keys(key)
        driver.find_element(By.ID, "key-submit").click()
    wait_for(driver, lambda d: "shown" in d.find_element(By.ID, "sessions-status").text)


@SIZES
def test_dashboard_rows_link_to_their_sessions_in_the_player(
    browser: Any, pages_stack: PagesStack, demo: DemoProject, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    dashboard = f"{pages_stack.query_url}/dashboard"
    player = f"{pages_stack.replay_url}/player"
    open_with_key(browser, dashboard, demo.secret_key)
    wait_for(browser, dashboard_ready, timeout_s=30)
    referrer_link = sessions_link(browser, "sources", "news.ycombinator.com")
    assert referrer_link == f"{player}?referrer=news.ycombinator.com"
    browser.find_element(By.CSS_SELECTOR, "[data-tabs=sources] .tab[data-tab=utm_source]").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#sources-table a.sessions-link"))
    utm_link = sessions_link(browser, "sources", "newsletter")
    assert utm_link == f"{player}?utmSource=newsletter"
    page_link = sessions_link(browser, "pages", "/pricing")
    assert page_link == f"{player}?page=%2Fpricing"
    # Under a dashboard filter, the link keeps the filters the player has too.
    browser.get(f"{dashboard}?f.country=DE")
    wait_for(browser, dashboard_ready, timeout_s=30)
    assert parse_qs(urlsplit(sessions_link(browser, "pages", "/pricing")).query) == {
        "country": ["DE"],
        "page": ["/pricing"],
    }

    # Only the recorded sessions with that source or page (the others have no such events).
    follow_to_player(browser, referrer_link, demo.secret_key)
    assert listed_sessions(browser) == ["recorded-article"]
    assert browser.find_element(By.CSS_SELECTOR, "#filters input[name=referrer]").get_attribute("value") == (
        "news.ycombinator.com"
    )
    follow_to_player(browser, utm_link, demo.secret_key)
    assert listed_sessions(browser) == ["recorded-catalogue"]
    follow_to_player(browser, page_link, demo.secret_key)
    assert listed_sessions(browser) == ["recorded-catalogue", "recorded-article"]
    assert fits_the_window(browser)


def meta_value(driver: Any, label: str) -> str | None:
    value: str | None = driver.execute_script(
        "const term = [...document.querySelectorAll('#player-meta dt')].find((dt) => dt.textContent === arguments[0]);"
        " return term ? term.nextElementSibling.textContent : null;",
        label,
    )
    return value


@SIZES
def test_the_player_filters_by_page_and_source_and_shows_the_visits_referrer(
    browser: Any, pages_stack: PagesStack, demo: DemoProject, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    player = f"{pages_stack.replay_url}/player"
    open_with_key(browser, player, demo.secret_key)
    wait_for(browser, lambda d: "shown" in d.find_element(By.ID, "sessions-status").text)
    browser.find_element(By.CSS_SELECTOR, "#filters input[name=page]").send_keys("/docs/getting-started")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_for(browser, lambda d: listed_sessions(d) == ["recorded-dashboard"])
    assert "page=%2Fdocs%2Fgetting-started" in browser.current_url
    # The player's way back carries the same filter to the dashboard.
    dashboard_link = browser.find_element(By.ID, "dashboard-link").get_attribute("href")
    assert parse_qs(urlsplit(dashboard_link).query) == {"f.page": ["/docs/getting-started"]}
    browser.find_element(By.CSS_SELECTOR, "#filters input[name=page]").clear()
    browser.find_element(By.CSS_SELECTOR, "#filters input[name=utmCampaign]").send_keys("november")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_for(browser, lambda d: listed_sessions(d) == ["recorded-catalogue"])
    assert fits_the_window(browser)

    for session_id, referrer, utm in [
        ("recorded-article", "https://news.ycombinator.com/", None),
        ("recorded-catalogue", "https://google.com/", "newsletter / email / november"),
        ("recorded-dashboard", "Direct / none", None),
    ]:
        browser.get(f"{player}?session={session_id}")
        wait_for(browser, lambda d: d.find_element(By.ID, "player-status").text.startswith("Loaded"), timeout_s=30)
        assert (meta_value(browser, "Referrer"), meta_value(browser, "UTM")) == (referrer, utm), session_id
        assert fits_the_window(browser)
    assert console_problems(browser) == []
