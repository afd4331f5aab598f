"""Hand-made events for the query tests, inserted with SQL (as ingest stores them), and a client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.query.app import create_app
from services.query.settings import QuerySettings
from services.query.tasks import refresh_until_current
from tests.harness import DatabaseHarness

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(timestamp: str) -> datetime:
    """A wall-clock time in Berlin (the test projects' timezone) as a UTC instant."""
    return datetime.fromisoformat(timestamp).replace(tzinfo=BERLIN).astimezone(UTC)


@dataclass
class Event:
    distinct_id: str
    session_id: str
    occurred_at: datetime
    path: str = "/"
    name: str = "pageview"
    domain: str = "example.com"
    referrer_domain: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    country: str | None = "DE"
    browser: str | None = "Chrome"
    os: str | None = "Windows"
    device_type: str | None = "desktop"
    is_bot: bool = False
    event_uuid: uuid.UUID = field(default_factory=uuid.uuid4)


async def insert_events(engine: AsyncEngine, project_id: int, events: Iterable[Event]) -> None:
    rows: list[dict[str, Any]] = []
    for event in events:
        row = asdict(event)
        row["project_id"] = project_id
        row["url"] = f"https://{event.domain}{event.path}"
        row["referrer"] = None if event.referrer_domain is None else f"https://{event.referrer_domain}/"
        rows.append(row)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain,"
                " path, referrer, referrer_domain, utm_source, utm_medium, utm_campaign, browser, os, device_type,"
                " country, is_bot)"
                " VALUES (:project_id, :occurred_at, :event_uuid, :name, :distinct_id, :session_id, :url, :domain,"
                " :path, :referrer, :referrer_domain, :utm_source, :utm_medium, :utm_campaign, :browser, :os,"
                " :device_type, :country, :is_bot)"
            ),
            rows,
        )


async def new_project(db: DatabaseHarness, timezone: str = "Europe/Berlin") -> dict[str, Any]:
    return await admin.create_project(
        db.admin, name=f"query-{uuid.uuid4().hex[:8]}", domains=["example.com"], timezone=timezone
    )


# The main data set, in Berlin time (UTC+1 in January). Range 2026-01-12 .. 2026-01-14.
#  v1 s1 Jan 12 10:00 / (from google.com, utm newsletter/email/jan), 10:01 /pricing, 10:05 signup on /pricing
#  v1 s2 Jan 13 09:00 /blog (direct)                                   -> a bounce
#  v2 s3 Jan 12 23:50 / (from news.ycombinator.com), Jan 13 00:10 /docs  -> crosses local midnight, but
#        both are Jan 12 in UTC (22:50Z, 23:10Z); US, Firefox, Linux
#  v3 s4 Jan 13 12:00 /pricing (from google.com), 12:00:30 signup, 12:02 /checkout; FR, Mobile Safari, iOS
#  v4 s5 Jan 14 08:00 / on shop.example.org (from t.co, utm twitter/social); no country, Edge  -> a bounce
#  v5 s6 Jan 14 23:30 /late (22:30Z, inside); GB, Firefox, Mac OS X                          -> a bounce
# Outside the range: v1 Jan 11 23:30 /old; v5 Jan 15 00:30 /late2 (still Jan 14 in UTC).
# A bot (stored flagged) on Jan 12 and 13, and another project's visitor on Jan 13.
def main_events() -> list[Event]:
    us = {"country": "US", "browser": "Firefox", "os": "Linux"}
    fr = {"country": "FR", "browser": "Mobile Safari", "os": "iOS", "device_type": "mobile"}
    gb = {"country": "GB", "browser": "Firefox", "os": "Mac OS X"}
    utm_jan = {"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "jan"}
    return [
        Event("v1", "s1", berlin("2026-01-12T10:00:00"), "/", referrer_domain="google.com", **utm_jan),  # type: ignore[arg-type]
        Event("v1", "s1", berlin("2026-01-12T10:01:00"), "/pricing"),
        Event("v1", "s1", berlin("2026-01-12T10:05:00"), "/pricing", name="signup"),
        Event("v1", "s2", berlin("2026-01-13T09:00:00"), "/blog"),
        Event("v2", "s3", berlin("2026-01-12T23:50:00"), "/", referrer_domain="news.ycombinator.com", **us),  # type: ignore[arg-type]
        Event("v2", "s3", berlin("2026-01-13T00:10:00"), "/docs", **us),  # type: ignore[arg-type]
        Event("v3", "s4", berlin("2026-01-13T12:00:00"), "/pricing", referrer_domain="google.com", **fr),  # type: ignore[arg-type]
        Event("v3", "s4", berlin("2026-01-13T12:00:30"), "/pricing", name="signup", **fr),  # type: ignore[arg-type]
        Event("v3", "s4", berlin("2026-01-13T12:02:00"), "/checkout", **fr),  # type: ignore[arg-type]
        Event(
            "v4",
            "s5",
            berlin("2026-01-14T08:00:00"),
            "/",
            domain="shop.example.org",
            referrer_domain="t.co",
            utm_source="twitter",
            utm_medium="social",
            country=None,
            browser="Edge",
        ),
        Event("v5", "s6", berlin("2026-01-14T23:30:00"), "/late", **gb),  # type: ignore[arg-type]
        # outside the range
        Event("v1", "s0", berlin("2026-01-11T23:30:00"), "/old"),
        Event("v5", "s7", berlin("2026-01-15T00:30:00"), "/late2", **gb),  # type: ignore[arg-type]
        # a bot, stored flagged: must never count
        Event("bot", "sb", berlin("2026-01-12T10:30:00"), "/", is_bot=True, device_type="bot"),
        Event("bot", "sb", berlin("2026-01-13T10:00:00"), "/pricing", is_bot=True, device_type="bot"),
    ]


@dataclass
class Dataset:
    project: dict[str, Any]
    other_project: dict[str, Any]
    source: str  # where the figures come from: "events" or "rollups"


async def retention_rows(engine: AsyncEngine, project_id: int) -> list[tuple[Any, ...]]:
    """The project's retention rows as (active_day, first_day, visitors); meaningful for the
    weeks whose rows are current (after build_rollups, every week)."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT active_day::text, first_day::text, visitors FROM query_rollup_retention"
                " WHERE project_id = :project_id ORDER BY 1, 2"
            ),
            {"project_id": project_id},
        )
        return [tuple(row) for row in result]


async def build_rollups(engine: AsyncEngine, project: dict[str, Any]) -> None:
    await refresh_until_current(engine, 100, int(project["id"]))


@pytest.fixture(params=["events", "rollups"])
async def dataset(request: pytest.FixtureRequest, db: DatabaseHarness, engine: AsyncEngine) -> Dataset:
    """The same expected numbers must come out of the raw events and out of the rollups."""
    project = await new_project(db)
    other = await new_project(db)
    await insert_events(engine, int(project["id"]), main_events())
    await insert_events(
        engine,
        int(other["id"]),
        [
            Event("x1", "sx1", berlin("2026-01-13T10:00:00"), "/"),
            Event("x1", "sx1", berlin("2026-01-13T10:01:00"), "/pricing"),
        ],
    )
    if request.param == "rollups":
        await build_rollups(engine, project)
        await build_rollups(engine, other)
    return Dataset(project, other, request.param)


@pytest.fixture
async def client(db: DatabaseHarness) -> AsyncIterator[AsyncTestClient[Any]]:
    # Rollups are read only where a test built them, and only while current; no background refresher.
    settings = QuerySettings(rollup_max_staleness_s=0, rollup_interval_s=0)
    async with AsyncTestClient(create_app(db.database, query_settings=settings)) as test_client:
        yield test_client


def auth(project: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {project['secretKey']}"}


RANGE = {"period": "custom", "date_from": "2026-01-12", "date_to": "2026-01-14"}


async def query(client: AsyncTestClient[Any], project: dict[str, Any], **spec: Any) -> dict[str, Any]:
    response = await client.post("/v1/query", json={**RANGE, **spec}, headers=auth(project))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def table(body: dict[str, Any]) -> list[list[Any]]:
    """Results as plain rows: dimension values, then metric values."""
    return [[*row["dimensions"], *row["metrics"]] for row in body["results"]]


def minutes_ago(now: datetime, minutes: float) -> datetime:
    return now - timedelta(minutes=minutes)
