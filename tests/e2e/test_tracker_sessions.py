"""After 30 minutes without activity the next activity starts a new session with its own full snapshot."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.browser import chromium, tracker_ready, wait_for
from tests.e2e.recording_store import poll, stored_chunks, stored_events
from tests.e2e.site import read_page, serve_site, tracker_tag
from tests.harness import DatabaseHarness

SESSION = "return JSON.parse(localStorage.getItem('sightline_session'))"
# Ages the stored session as if the visitor had been away for 31 minutes.
AGE_SESSION = (
    "const session = JSON.parse(localStorage.getItem('sightline_session'));"
    "session.lastActivity -= 31 * 60 * 1000;"
    "localStorage.setItem('sightline_session', JSON.stringify(session));"
)


async def test_activity_after_30_idle_minutes_starts_a_new_recorded_session(
    db: DatabaseHarness, ingest_url: str, site_project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    project_id = site_project["id"]
    pages = {
        "/": read_page("pricing.html", tracker_tag(ingest_url, str(site_project["publicKey"]))),
        "/bye": "<!doctype html><title>Elsewhere</title>",
    }
    with serve_site(pages) as site, chromium(db.root / "log" / "chromedriver-idle.log") as driver:
        driver.get(f"{site}/")
        wait_for(driver, tracker_ready)
        first = driver.execute_script(SESSION)

        async def first_chunk_stored() -> bool:
            return len(await stored_chunks(admin_engine, project_id, first["id"])) >= 1

        await poll(first_chunk_stored, what="the first session's first chunk")

        driver.execute_script(AGE_SESSION)
        driver.find_element(By.ID, "faq-toggle").click()
        driver.execute_script("window.sightline.track('came_back', {})")
        second = driver.execute_script(SESSION)
        driver.get(f"{site}/bye")
        after_leaving = driver.execute_script(SESSION)
        assert after_leaving["id"] == second["id"]

        async def both_sessions_stored() -> bool:
            events = await stored_events(admin_engine, project_id)
            chunks = await stored_chunks(admin_engine, project_id, second["id"])
            return len(events) >= 2 and len(chunks) >= after_leaving["nextSeq"]

        await poll(both_sessions_stored, what="the second session's chunks")

    assert second["id"] != first["id"]
    events = await stored_events(admin_engine, project_id)
    assert [(event.name, event.session_id) for event in events] == [
        ("pageview", first["id"]),
        ("came_back", second["id"]),
    ]
    assert len({event.distinct_id for event in events}) == 1, "the visitor stays the same"
    second_chunks = await stored_chunks(admin_engine, project_id, second["id"])
    assert [chunk.seq for chunk in second_chunks] == list(range(after_leaving["nextSeq"]))
    assert second_chunks[0].has_full_snapshot, "a player can start the new session from its first chunk"
