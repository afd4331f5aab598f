"""The dashboard's funnel card marks a sampled answer with "≈" and says how it was sampled (Chromium).

The query service here answers every funnel from the 1/8 visitor sample (its exact limit is 0
events), so a handful of hand-picked visitors give known figures: each sampled visitor counts
as 8, an unsampled one as nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.query.tasks import refresh_until_current
from tests.e2e.browser import chromium, console_problems, require_chromium, wait_for
from tests.e2e.test_goals_and_sources import dashboard_ready, fits_the_window, open_with_key
from tests.harness import DatabaseHarness
from tests.query.conftest import Event, insert_events


@pytest.fixture(scope="module")
def sampling_query_url(db: DatabaseHarness) -> Iterator[str]:
    require_chromium()
    with db.serve(
        "query",
        "query-funnel-sampled",
        QUERY_WORKERS="1",
        QUERY_ROLLUP_INTERVAL_S="0",
        QUERY_FUNNEL_EXACT_MAX_EVENTS="0",
    ) as query:
        yield query.url


@pytest.fixture(scope="module")
def browser(db: DatabaseHarness, sampling_query_url: str) -> Iterator[Any]:
    with chromium(db.root / "log" / "chromedriver-funnel-sampled.log") as driver:
        yield driver


async def visitors_by_sample(engine: AsyncEngine) -> tuple[list[str], list[str]]:
    """Candidate ids in and out of the 1/8 sample, by the sample index's own hash (migration 0780)."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT 'fs-' || n, (hashtext('fs-' || n) & 7) = 0 FROM generate_series(1, 200) AS n ORDER BY n")
        )
        rows = result.all()
    return [row[0] for row in rows if row[1]], [row[0] for row in rows if not row[1]]


FUNNEL_CELLS = (
    "return [...document.querySelectorAll('#funnel-result tbody tr')]"
    ".map((row) => [...row.querySelectorAll('td')].map((cell) => cell.textContent));"
)


@pytest.mark.parametrize("size", [(1440, 900), (390, 844)], ids=["1440px", "390px"])
async def test_a_sampled_funnel_is_marked_as_an_estimate(
    browser: Any, db: DatabaseHarness, engine: AsyncEngine, sampling_query_url: str, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    project = await admin.create_project(
        db.admin, name=f"funnel-{uuid.uuid4().hex[:8]}", domains=["example.com"], timezone="UTC"
    )
    inside, outside = await visitors_by_sample(engine)
    day = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=1)
    events: list[Event] = []
    # Sampled: three on "/", two of them then on /pricing. Not sampled: four doing both.
    for number, visitor in enumerate([*inside[:3], *outside[:4]]):
        start = day + timedelta(minutes=number)
        events.append(Event(visitor, f"s-{visitor}", start, "/"))
        if number != 2:
            events.append(Event(visitor, f"s-{visitor}", start + timedelta(seconds=30), "/pricing"))
    await insert_events(engine, int(project["id"]), events)
    # The volume auto sampling weighs is then the rollups' 13 events (over the limit of 0); without
    # them it would be estimated from the 1/64 sample, which holds none of these visitors.
    await refresh_until_current(engine, 100, int(project["id"]))

    open_with_key(browser, f"{sampling_query_url}/dashboard?funnel=%2F%2C%20%2Fpricing", str(project["secretKey"]))
    wait_for(browser, dashboard_ready, timeout_s=30)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#funnel-result tbody tr"))
    # 3 and 2 sampled visitors, times 8; 2 of 3 convert; 1 * 8 drop off.
    assert browser.execute_script(FUNNEL_CELLS) == [
        ["1. /", "\u224824", "100.0 %", "-"],
        ["2. /pricing", "\u224816", "\u224866.7 %", "\u22488"],
    ]
    note = browser.find_element(By.ID, "funnel-note").text
    assert note.startswith("\u2248 Estimated from a sample of 1 in 8 visitors (3 followed)")
    # Each count's title holds its stated interval.
    title = browser.find_element(By.CSS_SELECTOR, "#funnel-result td[data-funnel-visitors='2']").get_attribute("title")
    assert title.startswith("95 % interval: ")
    assert fits_the_window(browser)
    assert console_problems(browser) == []
