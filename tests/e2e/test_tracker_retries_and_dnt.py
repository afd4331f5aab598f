"""The tracker in Chromium against an ingest that fails on purpose, and with Do Not Track on."""

from __future__ import annotations

import gzip
import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.browser import chromium, tracker_ready, wait_for
from tests.e2e.recording_store import poll, stored_chunks, stored_events
from tests.e2e.site import SeenRequest, read_page, serve_site, serve_site_with_flaky_ingest, tracker_tag
from tests.harness import DatabaseHarness


def posted_json(request: SeenRequest) -> dict[str, Any]:
    body = gzip.decompress(request.body) if request.content_encoding == "gzip" else request.body
    decoded: dict[str, Any] = json.loads(body)
    return decoded


async def test_retries_honour_retry_after_and_resend_the_same_events_and_chunk(
    db: DatabaseHarness, ingest_url: str, site_project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    faults: dict[str, list[int | None]] = {
        # 503, then stored by ingest but the answer is lost, then (the third try) answered.
        "/v1/events": [503, None],
        "/v1/replay": [429],
    }
    # The page names the proxy's own origin as the tracker's src, so the tracker sends there.
    pages = {"/": read_page("pricing.html", tracker_tag("", str(site_project["publicKey"])))}
    with (
        serve_site_with_flaky_ingest(pages, ingest_url, faults) as (site, seen),
        chromium(db.root / "log" / "chromedriver-retries.log") as driver,
    ):
        driver.get(f"{site}/")
        wait_for(driver, tracker_ready)

        async def retried_to_success() -> bool:
            statuses = [(request.path, request.status) for request in seen]
            return ("/v1/events", 202) in statuses and ("/v1/replay", 202) in statuses

        await poll(retried_to_success, what="the retried requests to succeed")
        # Taken before the browser closes: leaving the page may send a later chunk.
        until_success = list(seen)

    event_posts = [request for request in until_success if request.path == "/v1/events"]
    replay_posts = [request for request in until_success if request.path == "/v1/replay"]
    assert [request.status for request in event_posts] == [503, None, 202]
    assert [request.status for request in replay_posts] == [429, 202]

    event_bodies = [posted_json(request) for request in event_posts]
    uuids = [[event["uuid"] for event in body["events"]] for body in event_bodies]
    assert uuids[0] == uuids[1] == uuids[2], "every try carries the same events"
    assert [[event["event"] for event in body["events"]] for body in event_bodies] == [["pageview"]] * 3
    # Retry-After: 1 was honoured (a lower bound the browser cannot beat, not a speed test).
    assert event_posts[1].at - event_posts[0].at >= 0.95
    assert replay_posts[1].at - replay_posts[0].at >= 0.95
    # The chunk is compressed once and resent byte for byte, with the same seq.
    assert replay_posts[0].content_encoding == "gzip"
    assert replay_posts[0].body == replay_posts[1].body
    assert posted_json(replay_posts[0])["seq"] == 0

    # Ingest saw the events twice (the lost answer, then the retry) and stored them once.
    [stored] = await stored_events(admin_engine, site_project["id"])
    assert str(stored.event_uuid) == uuids[0][0]
    session_id = event_bodies[0]["events"][0]["sessionId"]
    [first_chunk, *_] = await stored_chunks(admin_engine, site_project["id"], session_id)
    assert (first_chunk.seq, first_chunk.data) == (0, replay_posts[1].body)


async def test_with_do_not_track_and_data_respect_dnt_nothing_is_sent(
    db: DatabaseHarness, ingest_url: str, site_project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    key = str(site_project["publicKey"])
    pages = {
        "/private": read_page("pricing.html", tracker_tag(ingest_url, key, "data-respect-dnt")),
        "/ignores-dnt": read_page("pricing.html", tracker_tag(ingest_url, key)),
    }
    stored_keys = "return Object.keys(localStorage).filter((key) => key.startsWith('sightline')).sort()"
    with (
        serve_site(pages) as site,
        chromium(db.root / "log" / "chromedriver-dnt.log", preferences={"enable_do_not_track": True}) as driver,
    ):
        driver.get(f"{site}/private")
        wait_for(driver, lambda d: d.execute_script("return !!window.sightline"))
        assert driver.execute_script("return navigator.doNotTrack") == "1"
        # The tracker did not start: no visitor id, no session, no recording.
        assert driver.execute_script(stored_keys) == []
        driver.execute_script("window.sightline.track('ignored', {})")

        # Without data-respect-dnt the same browser is tracked: the check above is not vacuous.
        driver.get(f"{site}/ignores-dnt")
        wait_for(driver, tracker_ready)
        assert driver.execute_script(stored_keys) == ["sightline_distinct_id", "sightline_session"]

        async def pageview_stored() -> bool:
            return len(await stored_events(admin_engine, site_project["id"])) >= 1

        await poll(pageview_stored, what="the pageview of the page that ignores DNT")

    events = await stored_events(admin_engine, site_project["id"])
    assert [(event.name, event.path) for event in events] == [("pageview", "/ignores-dnt")]
