"""A project with a month of made-up traffic and real recordings, for the pages' tests and screenshots.

Events are inserted with SQL as ingest stores them (see tests/query/conftest.py); recordings
are the three sessions `make capture-recordings` recorded in Chromium
(tools/loadtest/recordings/*.json.gz), moved to recent times, plus a crawler's session and
one whose snapshot rrweb cannot rebuild (two elements under the document node).
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.common.settings import AdminDatabaseSettings
from tests.query.conftest import Event, insert_events
from tests.replay.conftest import record_session_urls
from tools.loadtest.payloads import RECORDINGS_DIR

PAGES = ("/", "/pricing", "/blog/launch", "/docs/getting-started", "/signup")
REFERRERS = (None, None, "google.com", "news.ycombinator.com", "twitter.com")
COUNTRIES = ("DE", "US", "FR", "GB", "NL")
CLIENTS = (("Chrome", "Windows", "desktop"), ("Safari", "iOS", "mobile"), ("Firefox", "Linux", "desktop"))
RECORDINGS = ("article", "catalogue", "dashboard")
BROKEN_SESSION = "broken-recording"
BOT_SESSION = "crawler-session"


@dataclass(frozen=True)
class DemoProject:
    project_id: int
    secret_key: str
    public_key: str
    # The recorded sessions' ids, newest first, as the player lists them (bots left out).
    session_ids: tuple[str, ...]
    pageviews: int
    visitors: int


def _events(now: datetime, rng: random.Random) -> list[Event]:
    events: list[Event] = []
    # Visitors spread over the last 30 days (more recently), and a few in earlier months.
    starts = [now - timedelta(minutes=rng.randint(5, 30 * 24 * 60)) for _ in range(120)]
    starts += [now - timedelta(days=rng.randint(40, 300)) for _ in range(30)]
    # Two visitors this hour: realtime and today's chart have something to show.
    starts += [now - timedelta(minutes=2), now - timedelta(minutes=1)]
    for visitor, started in enumerate(starts):
        browser, os_name, device = CLIENTS[visitor % len(CLIENTS)]
        referrer = REFERRERS[visitor % len(REFERRERS)]
        utm = ("newsletter", "email", "november") if visitor % 7 == 0 else (None, None, None)
        pages = [PAGES[0] if visitor % 3 else PAGES[2]]
        pages += rng.sample(PAGES[1:], rng.randint(0, 3))
        for step, path in enumerate(pages):
            occurred = min(started + timedelta(seconds=40 * step), now - timedelta(seconds=5))
            for name in ("pageview", "signup") if path == "/signup" else ("pageview",):
                events.append(
                    Event(
                        distinct_id=f"visitor-{visitor}",
                        session_id=f"visit-{visitor}",
                        occurred_at=occurred,
                        path=path,
                        name=name,
                        referrer_domain=referrer,
                        utm_source=utm[0],
                        utm_medium=utm[1],
                        utm_campaign=utm[2],
                        country=COUNTRIES[visitor % len(COUNTRIES)],
                        browser=browser,
                        os=os_name,
                        device_type=device,
                    )
                )
    return events


# Where each recorded session came from and the pages it has events on (its pageviews, as the
# tracker sends them beside the recording): the player's source filters and metadata show these.
RECORDED_VISITS: dict[str, tuple[str | None, tuple[str | None, str | None, str | None], tuple[str, ...]]] = {
    "article": ("news.ycombinator.com", (None, None, None), ("/", "/pricing")),
    "catalogue": ("google.com", ("newsletter", "email", "november"), ("/pricing",)),
    "dashboard": (None, (None, None, None), ("/docs/getting-started",)),
}
DEMO_GOALS = (("page", "/pricing", "Saw pricing"), ("event", "signup", "Signed up"))


def _recorded_visit(name: str, started: datetime) -> list[Event]:
    referrer, utm, pages = RECORDED_VISITS[name]
    browser, os_name, device = CLIENTS[RECORDINGS.index(name)]
    return [
        Event(
            distinct_id=f"visitor-{name}",
            session_id=f"recorded-{name}",
            occurred_at=started + timedelta(seconds=20 * step),
            path=path,
            referrer_domain=referrer,
            utm_source=utm[0],
            utm_medium=utm[1],
            utm_campaign=utm[2],
            country="DE",
            browser=browser,
            os=os_name,
            device_type=device,
        )
        for step, path in enumerate(pages)
    ]


def _recording(name: str) -> list[list[dict[str, Any]]]:
    document = json.loads(gzip.decompress((RECORDINGS_DIR / f"{name}.json.gz").read_bytes()))
    return [chunk["events"] for chunk in document["chunks"]]


def _broken(chunks: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """The first recording with a second <html> under the document node: no browser can build that."""
    broken = json.loads(json.dumps(chunks))
    snapshot = next(event for event in broken[0] if event["type"] == 2)
    snapshot["data"]["node"]["childNodes"].append(
        {"type": 2, "tagName": "html", "attributes": {}, "childNodes": [], "id": 999_999}
    )
    return broken


async def _insert_recording(
    engine: AsyncEngine,
    project: dict[str, Any],
    session_id: str,
    chunks: list[list[dict[str, Any]]],
    started_at: datetime,
    *,
    distinct_id: str,
    country: str,
    browser: str | None,
    os_name: str | None,
    device: str,
) -> None:
    shift_ms = int(started_at.timestamp() * 1000) - chunks[0][0]["timestamp"]
    moved = [[{**event, "timestamp": event["timestamp"] + shift_ms} for event in chunk] for chunk in chunks]
    first = moved[0][0]["timestamp"]
    last = moved[-1][-1]["timestamp"]
    pages = sum(1 for chunk in moved for event in chunk if event["type"] == 4)
    clicks = sum(
        1
        for chunk in moved
        for event in chunk
        if event["type"] == 3 and event["data"].get("source") == 2 and event["data"].get("type") == 2
    )
    first_url = next(event["data"]["href"] for event in moved[0] if event["type"] == 4)
    first_url = "https://example.com" + "/" + first_url.split("/", 3)[3]

    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)

    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO replay_sessions (project_id, session_id, distinct_id, started_at, ended_at, active_ms,"
                " click_count, page_count, first_url, country, browser, os, device_type, chunk_count, total_bytes)"
                " VALUES (:project_id, :session_id, :distinct_id, :started_at, :ended_at, :active_ms, :clicks,"
                " :pages, :first_url, :country, :browser, :os, :device, :chunk_count, 0)"
            ),
            {
                "project_id": project["id"],
                "session_id": session_id,
                "distinct_id": distinct_id,
                "started_at": at(first),
                "ended_at": at(last),
                "active_ms": last - first,
                "clicks": clicks,
                "pages": pages,
                "first_url": first_url,
                "country": country,
                "browser": browser,
                "os": os_name,
                "device": device,
                "chunk_count": len(moved),
            },
        )
        for seq, events in enumerate(moved):
            body = {
                "projectKey": project["publicKey"],
                "sessionId": session_id,
                "distinctId": distinct_id,
                "seq": seq,
                "events": events,
            }
            data = gzip.compress(json.dumps(body).encode())
            await connection.execute(
                text(
                    "INSERT INTO replay_chunks (project_id, session_id, seq, first_timestamp, last_timestamp,"
                    " event_count, has_full_snapshot, content_encoding, byte_size, data, distinct_id)"
                    " VALUES (:project_id, :session_id, :seq, :first, :last, :count, :snapshot, 'gzip', :size,"
                    " :data, :distinct_id)"
                ),
                {
                    "project_id": project["id"],
                    "session_id": session_id,
                    "seq": seq,
                    "first": at(events[0]["timestamp"]),
                    "last": at(events[-1]["timestamp"]),
                    "count": len(events),
                    "snapshot": any(event["type"] == 2 for event in events),
                    "size": len(data),
                    "data": data,
                    "distinct_id": distinct_id,
                },
            )


async def seed_demo_project(admin_settings: AdminDatabaseSettings, engine: AsyncEngine) -> DemoProject:
    project = await admin.create_project(
        admin_settings, name=f"demo-{uuid.uuid4().hex[:8]}", domains=["example.com"], timezone="UTC"
    )
    now = datetime.now(UTC)
    events = _events(now, random.Random(19))
    for minutes_ago, name in zip((50, 30, 10), RECORDINGS, strict=True):
        events += _recorded_visit(name, now - timedelta(minutes=minutes_ago))
    await insert_events(engine, int(str(project["id"])), events)
    # What the ingest writer records beside the events (migration 0840): the player's page and URL
    # filters read each session's URLs there.
    await record_session_urls(engine, int(str(project["id"])))
    async with engine.begin() as connection:
        for kind, value, goal_name in DEMO_GOALS:
            await connection.execute(
                text(
                    "INSERT INTO query_goals (project_id, goal_id, name, kind, value)"
                    " VALUES (:project_id, :goal_id, :name, :kind, :value)"
                ),
                {"project_id": project["id"], "goal_id": uuid.uuid4(), "name": goal_name, "kind": kind, "value": value},
            )
    session_ids: list[str] = []
    for minutes_ago, (name, (browser, os_name, device)) in zip(
        (50, 30, 10), zip(RECORDINGS, CLIENTS, strict=True), strict=True
    ):
        session_id = f"recorded-{name}"
        await _insert_recording(
            engine,
            project,
            session_id,
            _recording(name),
            now - timedelta(minutes=minutes_ago),
            distinct_id=f"visitor-{name}",
            country="DE",
            browser=browser,
            os_name=os_name,
            device=device,
        )
        session_ids.insert(0, session_id)
    await _insert_recording(
        engine,
        project,
        BROKEN_SESSION,
        _broken(_recording("article")),
        now - timedelta(minutes=70),
        distinct_id="visitor-broken",
        country="FR",
        browser="Chrome",
        os_name="Windows",
        device="desktop",
    )
    session_ids.append(BROKEN_SESSION)
    await _insert_recording(
        engine,
        project,
        BOT_SESSION,
        _recording("catalogue"),
        now - timedelta(minutes=5),
        distinct_id="crawler",
        country="US",
        browser=None,
        os_name=None,
        device="bot",
    )
    pageviews = sum(1 for event in events if event.name == "pageview")
    visitors = len({event.distinct_id for event in events})
    return DemoProject(
        int(str(project["id"])),
        str(project["secretKey"]),
        str(project["publicKey"]),
        tuple(session_ids),
        pageviews,
        visitors,
    )
