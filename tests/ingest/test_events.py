"""POST /v1/events: what is stored, enriched how, and acknowledged when."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.ingest.conftest import (
    GOOGLEBOT,
    GZIP_JSON,
    JSON,
    SAFARI_IPHONE,
    gzip_body,
    json_body,
    new_uuid,
    pageview,
    stored_events,
)


async def test_a_batch_is_stored_enriched_and_acknowledged(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    first, second = new_uuid(), new_uuid()
    payload = {
        "projectKey": project["publicKey"],
        "events": [
            pageview(
                uuid=first,
                timestamp="2026-11-27T10:00:00+01:00",
                url="https://WWW.Example.com/pricing?utm_source=newsletter&utm_medium=email&utm_campaign=launch&x=1",
                referrer="https://www.Google.com/search?q=sightline",
                title="Pricing",
            ),
            pageview(
                uuid=second,
                event="signup",
                timestamp="2026-11-27T09:00:05Z",
                url="https://shop.example.org/checkout",
                referrer="https://example.com/pricing",
                properties={"plan": "pro", "seats": 3, "trial": True, "ratio": 0.5, "coupon": None},
            ),
        ],
    }
    # Yesterday keeps the events inside the accepted window and never in the future, whatever
    # the time of day the suite runs at (a future timestamp would be clamped to the receive time).
    day = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    payload["events"][0]["timestamp"] = f"{day}T10:00:00+01:00"
    payload["events"][1]["timestamp"] = f"{day}T09:00:05Z"

    response = await client.post("/v1/events", content=json_body(payload), headers=JSON)

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2}
    rows = await stored_events(admin_engine, project["id"])
    assert len(rows) == 2
    view, signup = rows  # 09:00:00Z then 09:00:05Z
    assert view.event_uuid == uuid.UUID(first)
    assert view.occurred_at == datetime.fromisoformat(f"{day}T09:00:00+00:00")
    assert (view.name, view.distinct_id, view.session_id) == ("pageview", "visitor-1", "session-1")
    assert (view.domain, view.path, view.title) == ("example.com", "/pricing", "Pricing")
    assert view.referrer == "https://www.Google.com/search?q=sightline"
    assert view.referrer_domain == "google.com"
    assert (view.utm_source, view.utm_medium, view.utm_campaign, view.utm_term, view.utm_content) == (
        "newsletter",
        "email",
        "launch",
        None,
        None,
    )
    assert (view.browser, view.browser_version, view.os, view.os_version) == ("Chrome", "120", "Windows", "10")
    assert (view.device_type, view.is_bot) == ("desktop", False)
    assert view.country is None  # the test client's peer is not an IP address
    assert view.properties == {}

    assert signup.name == "signup"
    assert (signup.domain, signup.path) == ("shop.example.org", "/checkout")
    assert signup.referrer_domain == "example.com"  # another site of the project is still a referrer
    assert signup.properties == {"plan": "pro", "seats": 3, "trial": True, "ratio": 0.5, "coupon": None}


async def test_navigation_within_the_site_has_no_referrer_domain(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    payload = {
        "projectKey": project["publicKey"],
        "events": [pageview(url="https://example.com/b", referrer="https://www.example.com/a")],
    }
    response = await client.post("/v1/events", content=json_body(payload), headers=JSON)
    assert response.status_code == 202
    [row] = await stored_events(admin_engine, project["id"])
    assert row.referrer == "https://www.example.com/a"
    assert row.referrer_domain is None


async def test_gzip_and_text_plain_bodies_are_accepted(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    payload = {"projectKey": project["publicKey"], "events": [pageview()]}
    gzipped = await client.post("/v1/events", content=gzip_body(payload), headers=GZIP_JSON)
    # navigator.sendBeacon sends text/plain to avoid a CORS preflight.
    beacon = await client.post(
        "/v1/events", content=json_body(payload), headers={**JSON, "content-type": "text/plain;charset=UTF-8"}
    )
    assert (gzipped.status_code, beacon.status_code) == (202, 202)
    assert len(await stored_events(admin_engine, project["id"])) == 2


async def test_sent_at_corrects_the_clients_clock(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    # The client's clock is two hours behind: it says it sent the batch two hours ago.
    real_now = datetime.now(UTC)
    client_now = real_now - timedelta(hours=2)
    payload = {
        "projectKey": project["publicKey"],
        "sentAt": client_now.isoformat(),
        "events": [pageview(timestamp=(client_now - timedelta(seconds=30)).isoformat())],
    }
    response = await client.post("/v1/events", content=json_body(payload), headers=JSON)
    after = datetime.now(UTC)
    assert response.status_code == 202
    [row] = await stored_events(admin_engine, project["id"])
    # Shifted by (receive time - sentAt): 30 s before the moment the server received it.
    assert real_now - timedelta(seconds=30) <= row.occurred_at <= after - timedelta(seconds=30)


async def test_timestamps_in_the_future_are_clamped_to_now(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    before = datetime.now(UTC)
    payload = {"projectKey": project["publicKey"], "events": [pageview(timestamp="2999-01-01T00:00:00Z")]}
    response = await client.post("/v1/events", content=json_body(payload), headers=JSON)
    after = datetime.now(UTC)
    assert response.status_code == 202
    [row] = await stored_events(admin_engine, project["id"])
    assert before <= row.occurred_at <= after


async def test_a_retried_batch_is_stored_once(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    payload = {"projectKey": project["publicKey"], "events": [pageview(uuid=new_uuid()) for _ in range(5)]}
    first = await client.post("/v1/events", content=json_body(payload), headers=JSON)
    # The retry arrives with a new sentAt, so corrected timestamps move a little.
    payload["sentAt"] = datetime.now(UTC).isoformat()
    retries = await asyncio.gather(
        *(client.post("/v1/events", content=json_body(payload), headers=JSON) for _ in range(3))
    )
    assert [r.status_code for r in (first, *retries)] == [202] * 4
    assert all(r.json() == {"accepted": 5} for r in (first, *retries))
    rows = await stored_events(admin_engine, project["id"])
    assert sorted(str(row.event_uuid) for row in rows) == sorted(e["uuid"] for e in payload["events"])


async def test_the_same_uuid_twice_in_one_batch_is_stored_once(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    repeated = new_uuid()
    payload = {"projectKey": project["publicKey"], "events": [pageview(uuid=repeated), pageview(uuid=repeated)]}
    response = await client.post("/v1/events", content=json_body(payload), headers=JSON)
    assert response.status_code == 202
    assert len(await stored_events(admin_engine, project["id"])) == 1


async def test_events_without_uuid_are_each_stored(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    payload = {"projectKey": project["publicKey"], "events": [pageview(), pageview()]}
    response = await client.post("/v1/events", content=json_body(payload), headers=JSON)
    assert response.status_code == 202
    rows = await stored_events(admin_engine, project["id"])
    assert len({row.event_uuid for row in rows}) == 2


async def test_bots_are_stored_flagged(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    payload = {"projectKey": project["publicKey"], "events": [pageview()]}
    bot = await client.post("/v1/events", content=json_body(payload), headers={**JSON, "user-agent": GOOGLEBOT})
    no_agent = await client.post(
        "/v1/events", content=json_body(payload), headers={"content-type": "application/json", "user-agent": ""}
    )
    phone = await client.post("/v1/events", content=json_body(payload), headers={**JSON, "user-agent": SAFARI_IPHONE})
    assert [r.status_code for r in (bot, no_agent, phone)] == [202, 202, 202]
    rows = await stored_events(admin_engine, project["id"])
    flags = sorted((row.is_bot, row.device_type, row.browser or "", row.os or "") for row in rows)
    assert flags == [
        (False, "mobile", "Mobile Safari", "iOS"),
        (True, "bot", "", ""),
        (True, "bot", "Googlebot", ""),
    ]


async def test_values_that_look_like_sql_or_quote_ends_are_stored_verbatim(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    # The batch reaches Postgres as a dollar-quoted JSON literal (repository.write_batch):
    # none of these may end it early or change what is stored.
    tricky = [
        "$rows$); DROP TABLE events; --",
        "ends with $rows",
        "it's \\' a \"quote\" \\\\ and \\u0000-looking text",
        "$$ $rows_0 $ unicode: żółw 🐢",
    ]
    payload = {
        "projectKey": project["publicKey"],
        "events": [
            pageview(uuid=new_uuid(), title=title, properties={"text": title}, distinctId=title) for title in tricky
        ],
    }
    response = await client.post("/v1/events", content=json_body(payload), headers=JSON)
    assert response.status_code == 202, response.text
    rows = await stored_events(admin_engine, project["id"])
    assert sorted(row.title for row in rows) == sorted(tricky)
    assert sorted(row.properties["text"] for row in rows) == sorted(tricky)
    assert sorted(row.distinct_id for row in rows) == sorted(tricky)


async def _session_urls(admin_engine: AsyncEngine, project_id: int) -> list[tuple[Any, ...]]:
    async with admin_engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT session_id, distinct_id, url, path, first_seen, url_hash = md5(url)::uuid"
                " FROM event_session_urls WHERE project_id = :id ORDER BY 1, 2, 3"
            ),
            {"id": project_id},
        )
        return [tuple(row) for row in result]


async def test_each_sessions_urls_are_recorded_once_per_visitor_for_the_session_list(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    """event_session_urls (migration 0840): what the player's urlContains and page filters search."""
    day = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    pricing, docs = "https://example.com/pricing?plan=pro", "https://example.com/docs"
    first = [
        pageview(uuid=new_uuid(), url=pricing, timestamp=f"{day}T10:00:05Z"),
        pageview(uuid=new_uuid(), url=pricing, timestamp=f"{day}T10:00:01Z"),  # earlier, later in the batch
        pageview(uuid=new_uuid(), url=docs, timestamp=f"{day}T10:00:09Z"),
        pageview(uuid=new_uuid(), url=docs, timestamp=f"{day}T10:00:10Z", distinctId="visitor-2"),
        pageview(uuid=new_uuid(), url=docs, timestamp=f"{day}T10:00:11Z", sessionId="session-2"),
    ]
    later = [pageview(uuid=new_uuid(), url=pricing, timestamp=f"{day}T11:00:00Z")]
    for events in (first, later, first):  # the third is a retry of the first
        response = await client.post(
            "/v1/events", content=json_body({"projectKey": project["publicKey"], "events": events}), headers=JSON
        )
        assert response.status_code == 202, response.text

    at = datetime.fromisoformat(f"{day}T10:00:00+00:00")
    assert await _session_urls(admin_engine, project["id"]) == [
        ("session-1", "visitor-1", docs, "/docs", at + timedelta(seconds=9), True),
        ("session-1", "visitor-1", pricing, "/pricing", at + timedelta(seconds=1), True),
        ("session-1", "visitor-2", docs, "/docs", at + timedelta(seconds=10), True),
        ("session-2", "visitor-1", docs, "/docs", at + timedelta(seconds=11), True),
    ]
    assert len(await stored_events(admin_engine, project["id"])) == 6


async def test_concurrent_batches_naming_the_same_sessions_urls_all_commit(
    client: AsyncTestClient[Litestar], project: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    """Batches whose events name the same sessions and URLs in different orders: no deadlock, one row each."""
    urls = [f"https://example.com/page-{n}" for n in range(6)]
    sessions = [f"session-{n}" for n in range(3)]
    batches = [
        [
            pageview(uuid=new_uuid(), url=url, sessionId=session)
            for session in (sessions if b % 2 else sessions[::-1])
            for url in (urls if b % 2 else urls[::-1])
        ]
        for b in range(8)
    ]
    responses = await asyncio.gather(
        *(
            client.post(
                "/v1/events", content=json_body({"projectKey": project["publicKey"], "events": events}), headers=JSON
            )
            for events in batches
        )
    )
    assert [r.status_code for r in responses] == [202] * 8
    rows = await _session_urls(admin_engine, project["id"])
    assert sorted((row[0], row[2]) for row in rows) == sorted((s, u) for s in sessions for u in urls)
    assert len(await stored_events(admin_engine, project["id"])) == 8 * 18
