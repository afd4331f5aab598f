"""A real Chromium visits a small site that embeds /tracker.js; what ingest stored is checked in Postgres.

The visit: load the home page, type into an input, click a button that sends a custom event,
navigate within the page (history.pushState), follow a link to a second page (a full load),
click there twice, and leave for a page without the tracker (pagehide flushes with sendBeacon).
"""

from __future__ import annotations

import time
from typing import Any

from selenium.webdriver.common.by import By
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.browser import chromium, tracker_ready, wait_for
from tests.e2e.recording_store import (
    chunk_events,
    chunk_json,
    poll,
    stored_chunks,
    stored_events,
    stored_session,
)
from tests.e2e.site import read_page, serve_site, tracker_tag
from tests.harness import DatabaseHarness

TYPED_SECRET = "hunter2-sightline-secret"
# rrweb event types and incremental sources (rrweb's EventType / IncrementalSource).
FULL_SNAPSHOT, INCREMENTAL_SNAPSHOT, META = 2, 3, 4
INPUT_SOURCE = 5


def browser_state(driver: Any) -> dict[str, Any]:
    """What the tracker keeps in the site's localStorage."""
    state: dict[str, Any] = driver.execute_script(
        "const session = JSON.parse(localStorage.getItem('sightline_session'));"
        "return {distinctId: localStorage.getItem('sightline_distinct_id'), sessionId: session.id,"
        " nextSeq: session.nextSeq}"
    )
    return state


async def test_a_visit_is_stored_as_pageviews_a_custom_event_and_a_masked_recording(
    db: DatabaseHarness, ingest_url: str, site_project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    project_id = site_project["id"]
    tag = tracker_tag(ingest_url, str(site_project["publicKey"]))
    pages = {
        "/": read_page("home.html", tag),
        "/pricing": read_page("pricing.html", tag),
        "/bye": "<!doctype html><title>Elsewhere</title><p>No tracker here.</p>",
    }
    clicks_made = 0
    with serve_site(pages) as site, chromium(db.root / "log" / "chromedriver-visit.log") as driver:
        visit_started = time.time()
        driver.get(f"{site}/")
        wait_for(driver, tracker_ready)
        identity = {key: value for key, value in browser_state(driver).items() if key != "nextSeq"}

        driver.find_element(By.ID, "email").send_keys(TYPED_SECRET)
        driver.find_element(By.ID, "signup").click()
        driver.find_element(By.ID, "show-features").click()
        clicks_made += 2
        wait_for(driver, lambda d: d.current_url == f"{site}/features")

        async def first_chunk_stored() -> bool:
            return any(chunk.seq == 0 for chunk in await stored_chunks(admin_engine, project_id, identity["sessionId"]))

        # The home page's full snapshot goes out with the first 5-second chunk; waiting for it
        # before leaving makes the test about the regular path, not only the pagehide beacon.
        await poll(first_chunk_stored, what="the first replay chunk")

        driver.find_element(By.ID, "to-pricing").click()
        clicks_made += 1
        wait_for(driver, lambda d: d.current_url == f"{site}/pricing" and tracker_ready(d))
        assert {key: browser_state(driver)[key] for key in identity} == identity, "one visitor, one session"
        for _ in range(2):
            driver.find_element(By.ID, "faq-toggle").click()
            clicks_made += 1
        wait_for(driver, lambda d: d.find_element(By.ID, "faq").is_displayed() is False)

        driver.get(f"{site}/bye")
        left_at = time.time()
        # The page left behind has no tracker, but the same origin's storage says how many
        # chunks the tracker numbered: all of them must arrive.
        chunks_numbered = browser_state(driver)["nextSeq"]

        async def everything_stored() -> bool:
            events = await stored_events(admin_engine, project_id)
            chunks = await stored_chunks(admin_engine, project_id, identity["sessionId"])
            return len(events) >= 4 and len(chunks) >= chunks_numbered

        await poll(everything_stored, what="the pagehide flush")

    events = await stored_events(admin_engine, project_id)
    assert [(event.name, event.path) for event in events] == [
        ("pageview", "/"),
        ("signup_click", "/"),
        ("pageview", "/features"),
        ("pageview", "/pricing"),
    ]
    pageviews = [event for event in events if event.name == "pageview"]
    assert [event.referrer for event in pageviews] == [None, f"{site}/", f"{site}/features"]
    # Navigation within the site is not a referring domain.
    assert [event.referrer_domain for event in pageviews] == [None, None, None]
    assert [event.title for event in pageviews] == ["Acme home", "Acme features", "Acme pricing"]
    custom = events[1]
    assert custom.properties == {"plan": "pro", "seats": 3, "annual": True}
    assert {event.distinct_id for event in events} == {identity["distinctId"]}
    assert {event.session_id for event in events} == {identity["sessionId"]}
    assert {(event.browser, event.is_bot) for event in events} == {("Chrome", False)}
    assert len({event.event_uuid for event in events}) == 4

    chunks = await stored_chunks(admin_engine, project_id, identity["sessionId"])
    assert [chunk.seq for chunk in chunks] == list(range(chunks_numbered)), "a chunk is missing"
    assert chunks[0].has_full_snapshot
    assert chunks[0].content_encoding == "gzip"
    all_events = [event for chunk in chunks for event in chunk_events(chunk)]
    # One full snapshot (and one meta event) per page load: home and pricing.
    assert sum(event["type"] == FULL_SNAPSHOT for event in all_events) == 2
    assert sum(event["type"] == META for event in all_events) == 2
    typed = [
        event["data"]["text"]
        for event in all_events
        if event["type"] == INCREMENTAL_SNAPSHOT and event["data"]["source"] == INPUT_SOURCE
    ]
    assert typed, "the typing was not recorded at all"
    assert typed[-1] == "*" * len(TYPED_SECRET), "the input was recorded masked"
    for chunk in chunks:
        assert TYPED_SECRET.encode() not in chunk_json(chunk)
        assert TYPED_SECRET[:7].encode() not in chunk_json(chunk)

    session = await stored_session(admin_engine, project_id, identity["sessionId"])
    assert session is not None
    assert session.distinct_id == identity["distinctId"]
    assert session.first_url == f"{site}/"
    assert session.page_count == 2
    assert session.click_count >= clicks_made
    assert session.chunk_count == len(chunks)
    # The pricing page was recorded after the first 5-second chunk had been sent, so the
    # session spans at least that; it cannot be longer than the visit itself.
    assert 5000 <= session.duration_ms <= (left_at - visit_started) * 1000 + 1000


# Each change is made in a task of its own (a MessageChannel message), so rrweb's mutation
# observer reports each one on its own: one rrweb event per change.
BURST_PAGE = """<!doctype html><title>Busy page</title>{{TRACKER}}
<ul id="list"></ul>
<script>
  window.burst = (count) => new Promise((done) => {
    const channel = new MessageChannel();
    let made = 0;
    channel.port1.onmessage = () => {
      const item = document.createElement('li');
      item.textContent = 'item ' + made;
      document.getElementById('list').appendChild(item);
      made += 1;
      if (made < count) channel.port2.postMessage(null); else done(made);
    };
    channel.port2.postMessage(null);
  });
</script>"""
BURST_CHANGES = 6000


def _added_items(chunks: list[Any]) -> list[str]:
    """The burst's items in the order the chunks recorded them: each added text node's text."""
    return [
        node["node"]["textContent"]
        for chunk in chunks
        for event in chunk_events(chunk)
        if event["type"] == INCREMENTAL_SNAPSHOT and event["data"]["source"] == 0
        for node in event["data"]["adds"]
        if node["node"].get("type") == 3  # the item's text node
    ]


async def test_a_page_emitting_more_events_than_a_chunk_may_hold_loses_none(
    db: DatabaseHarness, ingest_url: str, site_project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    """Ingest refuses a chunk of over 5,000 rrweb events (MAX_RRWEB_EVENTS_PER_CHUNK): the tracker
    cuts a 5-second buffer into chunks of at most 1,000, each with its own seq, so a busy page
    keeps every event."""
    project_id = site_project["id"]
    page = BURST_PAGE.replace("{{TRACKER}}", tracker_tag(ingest_url, str(site_project["publicKey"])))
    with serve_site({"/": page}) as site, chromium(db.root / "log" / "chromedriver-burst.log") as driver:
        driver.get(f"{site}/")
        wait_for(driver, tracker_ready)
        session_id = browser_state(driver)["sessionId"]
        made = driver.execute_async_script(
            "const finished = arguments[arguments.length - 1]; window.burst(arguments[0]).then(finished);",
            BURST_CHANGES,
        )
        assert made == BURST_CHANGES

        # Waits for the items themselves: the chunks also hold the meta and full snapshot events,
        # so a count of all events reached BURST_CHANGES before the last chunk's items were stored.
        async def every_change_stored() -> bool:
            chunks = await stored_chunks(admin_engine, project_id, session_id)
            return len(_added_items(chunks)) >= BURST_CHANGES

        await poll(every_change_stored, what="every change's chunk")
        chunks_numbered = browser_state(driver)["nextSeq"]

    chunks = await stored_chunks(admin_engine, project_id, session_id)
    assert [chunk.seq for chunk in chunks] == list(range(len(chunks))), "a chunk is missing"
    assert len(chunks) <= chunks_numbered
    sizes = [len(chunk_events(chunk)) for chunk in chunks]
    assert max(sizes) <= 1000, sizes
    added = _added_items(chunks)
    assert added == [f"item {index}" for index in range(BURST_CHANGES)], "a change is missing or out of order"
