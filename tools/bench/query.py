"""`make bench-query`: load 10M events over 30 days, then time the dashboard's standard calls.

Runs against a stack started by `sightline up` with the same environment (the Makefile target
uses its own data directory and ports). Loading happens inside Postgres (generate_series), one
local day per statement, with progress; a second run reuses the loaded project. Timings are of
HTTP calls to the running query service (Granian, through PgBouncer), p50/p95 over repeated
runs; nothing here is asserted, the figures are printed and written to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, get_args
from zoneinfo import ZoneInfo

import httpx
import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli import admin
from services.cli.stack import read_env_file
from services.common.db import create_admin_engine
from services.common.partition_repository import ensure_event_partitions
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, ServerSettings, StackSettings
from services.query import planner, repository, rollup_repository, service
from services.query.schemas import DateRangeFields, QuerySpec
from services.query.settings import QuerySettings
from services.query.tasks import refresh_until_current, rollup_engine
from services.query.vocabulary import DIMENSIONS, Metric

TIMEZONE = "Europe/Berlin"
DAYS = 30

# One statement per local day. Sessions get their visitor, source and client once (the
# MATERIALIZED CTE keeps random() from being re-drawn per event); events follow 20-60 s apart.
# Skews: visitors, pages and countries are drawn as floor(random()^k * n), so a few are common
# and many are rare; 40% of visits are direct; 10% carry UTM tags; ~3% of events are bots.
LOAD_DAY_SQL = """
WITH bounds AS (
    SELECT CAST(:day_start AS timestamptz) AS day_start, CAST(:day_end AS timestamptz) AS day_end
), sessions AS MATERIALIZED (
    SELECT n AS session_no,
           floor(power(random(), 2) * CAST(:visitor_pool AS int))::int AS visitor,
           b.day_start + random() * (b.day_end - b.day_start) AS started_at,
           b.day_end,
           1 + floor(-ln(1 - random()) * 3)::int AS length,
           CASE WHEN random() < 0.4 THEN NULL
                ELSE (ARRAY['google.com','bing.com','duckduckgo.com','news.ycombinator.com','reddit.com',
                            't.co','facebook.com','linkedin.com','github.com','stackoverflow.com',
                            'producthunt.com','medium.com','dev.to','lobste.rs','yandex.ru'])
                     [1 + floor(power(random(), 2) * 15)::int] END AS referrer_domain,
           CASE WHEN random() < 0.1
                THEN (ARRAY['newsletter','twitter','google','partner','podcast'])[1 + floor(random() * 5)::int]
                END AS utm_source,
           (ARRAY['DE','US','FR','GB','NL','AT','CH','IT','ES','PL','SE','CA','BR','IN','JP','AU','DK','NO',
                  'FI','BE','CZ','PT','IE','NZ','MX','AR','ZA','KR','SG','TR'])
                 [1 + floor(power(random(), 2) * 30)::int] AS country,
           floor(random() * 8)::int AS client,
           random() < 0.03 AS is_bot
    FROM bounds b, generate_series(1, CAST(:sessions AS int)) AS n
)
INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path,
                    referrer, referrer_domain, utm_source, utm_medium, utm_campaign, browser, os, device_type,
                    country, is_bot)
SELECT CAST(:project_id AS bigint),
       least(s.started_at + e.step * interval '40 seconds' * (0.5 + random()), s.day_end - interval '1 ms'),
       gen_random_uuid(),
       CASE WHEN e.step > 0 AND random() < 0.1 THEN 'signup' ELSE 'pageview' END,
       'visitor-' || s.visitor,
       CAST(:day_key AS text) || '-' || s.session_no,
       'https://example.com' || p.path,
       'example.com',
       p.path,
       CASE WHEN e.step = 0 AND s.referrer_domain IS NOT NULL THEN 'https://' || s.referrer_domain || '/' END,
       CASE WHEN e.step = 0 THEN s.referrer_domain END,
       CASE WHEN e.step = 0 THEN s.utm_source END,
       CASE WHEN e.step = 0 AND s.utm_source IS NOT NULL THEN 'campaign' END,
       CASE WHEN e.step = 0 AND s.utm_source IS NOT NULL THEN 'autumn' END,
       (ARRAY['Chrome','Chrome','Firefox','Safari','Mobile Safari','Chrome Mobile','Edge','Samsung Internet'])
           [1 + s.client],
       (ARRAY['Windows','Mac OS X','Linux','Mac OS X','iOS','Android','Windows','Android'])[1 + s.client],
       CASE WHEN s.is_bot THEN 'bot' ELSE (ARRAY['desktop','desktop','desktop','desktop','mobile','mobile',
                                                  'desktop','tablet'])[1 + s.client] END,
       s.country,
       s.is_bot
FROM sessions s
CROSS JOIN LATERAL generate_series(0, s.length - 1) AS e(step)
CROSS JOIN LATERAL (
    SELECT CASE WHEN e.step = 0 AND random() < 0.5 THEN '/'
                ELSE (ARRAY['/','/pricing','/docs','/blog','/features','/signup','/about','/contact'])
                         [1 + floor(power(random(), 2) * 8)::int]
                     || CASE WHEN random() < 0.5 THEN '' ELSE '/' || floor(power(random(), 3) * 60)::int END
           END AS path
) AS p
"""

# The 30-day dashboard: each call without a filter and with one.
STANDARD_CALLS: dict[str, dict[str, Any]] = {
    "overview": {"metrics": ["visitors", "pageviews", "sessions", "bounce_rate", "visit_duration"]},
    "timeseries by day": {"metrics": ["visitors", "pageviews"], "dimensions": ["time:day"]},
    "top pages": {"metrics": ["visitors", "pageviews"], "dimensions": ["page"], "limit": 10},
    "top referrers": {"metrics": ["visitors"], "dimensions": ["referrer"], "limit": 10},
    "countries": {"metrics": ["visitors"], "dimensions": ["country"], "limit": 10},
    "browsers": {"metrics": ["visitors"], "dimensions": ["browser"], "limit": 10},
}
FILTERS: dict[str, list[dict[str, Any]]] = {
    "no filter": [],
    "country is DE": [{"dimension": "country", "operator": "is", "values": ["DE"]}],
    "page is /pricing": [{"dimension": "page", "operator": "is", "values": ["/pricing"]}],
}


# Every shape the API accepts, timed over HTTP with --shapes: each dimension (with every metric),
# comparison, a filter on each fixed column, funnels of 3 and 8 steps, retention; over 30 days
# and 12 months (the 12-month range holds the same 30 days of data and 11 empty months).
# Every metric and dimension the API accepts, from the query service's own vocabulary.
ALL_METRICS = list(get_args(Metric))
ALL_DIMENSIONS = list(DIMENSIONS)
FUNNEL_STEPS = ["/", "/pricing", "/docs", "/blog", "/features", "/signup", "/about", "/contact"]


# Goals saved for the measured project before the shapes are timed: the loader's section pages and
# its one custom event.
BENCH_GOALS = [
    *({"type": "page", "value": value} for value in ["/pricing", "/signup", "/features", "/contact", "/docs"]),
    {"type": "event", "value": "signup"},
]


# The Goals card's filter chips: visit dimensions (from the event-name rows of their grain, migration
# 0770), a page, an entry page and an event name (the event-page rows, migration 0810), an exit page
# (the session days' pages and event names, 0850) and two visit chips (the event-name rows of the
# pair's grain, 0810; the page goals from the session days' pages, 0850).
def _chip(dimension: str, value: str | None) -> dict[str, Any]:
    return {"dimension": dimension, "operator": "is", "values": [value]}


GOAL_FILTER_CHIPS: list[tuple[str, list[dict[str, Any]]]] = [
    ("country is DE", [_chip("country", "DE")]),
    ("utm_source is newsletter", [_chip("utm_source", "newsletter")]),
    ("referrer is direct", [_chip("referrer", None)]),
    ("device is mobile", [_chip("device", "mobile")]),
    ("page is /pricing", [_chip("page", "/pricing")]),
    ("entry_page is /", [_chip("entry_page", "/")]),
    ("event_name is signup", [_chip("event_name", "signup")]),
    ("exit_page is /pricing", [_chip("exit_page", "/pricing")]),
    ("country is DE, device is mobile", [_chip("country", "DE"), _chip("device", "mobile")]),
]
# The Custom events card under these (the first two: one visit chip).
CUSTOM_EVENT_CHIPS = [0, 1, 4, 5, 7, 8]


def shapes(period: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (path, body) for one period."""
    found: dict[str, tuple[str, dict[str, Any]]] = {
        "all metrics": ("/v1/query", {"metrics": ALL_METRICS}),
        "all metrics, previous period": ("/v1/query", {"metrics": ALL_METRICS, "comparison": "previous_period"}),
    }
    for dimension in ALL_DIMENSIONS:
        # Hours over 12 months would be 8,760 rows; the dashboard asks hours for short ranges.
        limit = 24 * 31 if dimension == "time:hour" else 10
        found[f"by {dimension}"] = ("/v1/query", {"metrics": ALL_METRICS, "dimensions": [dimension], "limit": limit})
    found["by entry_page, os is iOS"] = (
        "/v1/query",
        {
            "metrics": ["sessions", "bounce_rate", "visit_duration"],
            "dimensions": ["entry_page"],
            "filters": [{"dimension": "os", "operator": "is", "values": ["iOS"]}],
            "limit": 10,
        },
    )
    found["by time:day, utm_source is newsletter"] = (
        "/v1/query",
        {
            "metrics": ["visitors", "sessions"],
            "dimensions": ["time:day"],
            "filters": [{"dimension": "utm_source", "operator": "is", "values": ["newsletter"]}],
        },
    )
    found["by country, browser, os is Android"] = (
        "/v1/query",
        {
            "metrics": ["visitors", "pageviews"],
            "dimensions": ["country", "browser"],
            "filters": [{"dimension": "os", "operator": "is", "values": ["Android"]}],
            "limit": 10,
        },
    )
    for steps in (3, 8):
        found[f"funnel, {steps} page steps"] = (
            "/v1/funnel",
            {"steps": [{"type": "page", "value": value} for value in FUNNEL_STEPS[:steps]], "window_minutes": 60},
        )
    found["retention, 8 weeks"] = ("/v1/retention", {"weeks": 8})
    # The project's goals (BENCH_GOALS, saved before the timings): three queries whatever their number.
    found[f"goal conversions, {len(BENCH_GOALS)} goals"] = ("/v1/goals/conversions", {})
    # The Goals card under each kind of filter chip the dashboard sets (`is`, one value; None: direct).
    for label, filters in GOAL_FILTER_CHIPS:
        found[f"goal conversions, {len(BENCH_GOALS)} goals, {label}"] = ("/v1/goals/conversions", {"filters": filters})
    # The Custom events card (event names but pageviews) under a chip, and with the previous period.
    not_pageviews = {"dimension": "event_name", "operator": "is_not", "values": ["pageview"]}
    for label, filters in (GOAL_FILTER_CHIPS[index] for index in CUSTOM_EVENT_CHIPS):
        found[f"custom events, {label}"] = (
            "/v1/query",
            {
                "metrics": ["visitors", "events"],
                "dimensions": ["event_name"],
                "filters": [*filters, not_pageviews],
                "limit": 10,
            },
        )
    # The Top pages card under an entry-page chip and an event chip (the event-page rows), the
    # domains under a visit chip (the domain rows of its grain, migration 0810).
    for label, filters in (GOAL_FILTER_CHIPS[5], GOAL_FILTER_CHIPS[6]):
        found[f"top pages, {label}"] = (
            "/v1/query",
            {"metrics": ["visitors", "pageviews"], "dimensions": ["page"], "filters": filters, "limit": 10},
        )
    found["by domain, country is DE"] = (
        "/v1/query",
        {"metrics": ["visitors", "sessions"], "dimensions": ["domain"], "filters": [_chip("country", "DE")]},
    )
    found["by event_name, country is DE, previous period"] = (
        "/v1/query",
        {
            "metrics": ALL_METRICS,
            "dimensions": ["event_name"],
            "filters": [{"dimension": "country", "operator": "is", "values": ["DE"]}],
            "comparison": "previous_period",
            "limit": 10,
        },
    )
    return {f"{name} ({period})": (path, {**body, "period": period}) for name, (path, body) in found.items()}


def log(message: str) -> None:
    print(message, flush=True)


@asynccontextmanager
async def admin_engine(admin_settings: AdminDatabaseSettings) -> AsyncIterator[AsyncEngine]:
    """A direct engine for loading and inspecting, disposed on the way out."""
    engine = create_admin_engine(admin_settings)
    try:
        yield engine
    finally:
        await engine.dispose()


async def find_or_create_project(admin_settings: AdminDatabaseSettings, name: str) -> tuple[dict[str, Any], bool]:
    """(project, created). A stored bench project keeps its keys in the data directory."""
    key_file = Path(f"/tmp/{name}.json")
    for project in await admin.list_projects(admin_settings):
        if project["name"] == name and key_file.exists():
            return json.loads(key_file.read_text()), False
    project = await admin.create_project(admin_settings, name=name, domains=["example.com"], timezone=TIMEZONE)
    # Owner-only before the secret key is written, not after.
    key_file.touch(mode=0o600)
    key_file.chmod(0o600)
    key_file.write_text(json.dumps(project))
    return project, True


async def load_project(
    engine: AsyncEngine, project_id: int, total_events: int, today: date, now: datetime, label: str
) -> None:
    zone = ZoneInfo(TIMEZONE)
    first_day = today - timedelta(days=DAYS - 1)
    # Today is loaded up to now, at the same rate as the full days before it.
    day_fraction = (now - datetime.combine(today, datetime.min.time(), zone)).total_seconds() / 86400
    per_full_day = total_events / (DAYS - 1 + day_fraction)
    mean_session_length = 3.5  # 1 + floor(exponential with mean 3), measured: ~3.5 events
    loaded = 0
    started = time.monotonic()
    for offset in range(DAYS):
        day = first_day + timedelta(days=offset)
        day_start = datetime.combine(day, datetime.min.time(), zone)
        day_end = min(day_start + timedelta(days=1), now) if day == today else day_start + timedelta(days=1)
        share = (day_end - day_start).total_seconds() / 86400
        sessions = int(per_full_day * share / mean_session_length)
        async with engine.begin() as connection:
            result = await connection.execute(
                text(LOAD_DAY_SQL),
                {
                    "project_id": project_id,
                    "visitor_pool": max(1000, total_events // 8),
                    "day_start": day_start.astimezone(UTC),
                    "day_end": day_end.astimezone(UTC),
                    "sessions": sessions,
                    "day_key": f"{day:%Y%m%d}",
                },
            )
            loaded += result.rowcount
        # A new connection for the next day: the sessions trigger's statements are planned once per
        # connection (PL/pgSQL caches them), and a plan made while query_sessions was empty scanned
        # the project's sessions once per new session the next day (seen: day 2 of 10M, >10 min).
        await engine.dispose()
        elapsed = time.monotonic() - started
        log(f"  {label}: day {offset + 1}/{DAYS} ({day}) {loaded:,} events, {loaded / elapsed:,.0f} events/s")


async def load(admin_settings: AdminDatabaseSettings, total_events: int, name: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    today = now.astimezone(ZoneInfo(TIMEZONE)).date()
    async with admin_engine(admin_settings) as engine:
        async with engine.begin() as connection:
            # Daily partitions for every loaded day (UTC days, one either side of the local range).
            await ensure_event_partitions(connection, today - timedelta(days=DAYS + 1), today + timedelta(days=1))
        project, created = await find_or_create_project(admin_settings, name)
        if not created:
            log(f"project {name} already loaded; delete /tmp/{name}.json to load afresh")
            return project
        log(f"loading {total_events:,} events over {DAYS} days into project {project['id']} ({TIMEZONE}) ...")
        await load_project(engine, int(project["id"]), total_events, today, now, name)
        for noise_name in (f"{name}-noise-1", f"{name}-noise-2"):
            noise, _ = await find_or_create_project(admin_settings, noise_name)
            await load_project(engine, int(noise["id"]), total_events // 10, today, now, noise_name)
        log("ANALYZE ...")
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("VACUUM ANALYZE events"))
        return project


async def build_rollups(database: DatabaseSettings) -> None:
    engine = rollup_engine(database)
    try:
        started = time.monotonic()
        rebuilt = 0
        while True:
            rebuilt += await refresh_until_current(engine, 10)
            async with engine.connect() as connection:
                # A query service running its refresher may hold some days (or weeks); wait for those too.
                if (
                    not await rollup_repository.count_days_to_build(connection)
                    and not await rollup_repository.weeks_to_build(connection, 1)
                    and not await rollup_repository.retention_weeks_to_build(connection, 1)
                ):
                    break
            await asyncio.sleep(1)
        log(
            f"rollups: all days and complete weeks current after {time.monotonic() - started:.1f} s"
            f" ({rebuilt} days and weeks rebuilt here)"
        )
    finally:
        await engine.dispose()


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


async def measure(
    base_url: str, secret_key: str, runs: int, calls: tuple[str, ...] = tuple(STANDARD_CALLS)
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {secret_key}"}
    figures: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        for filter_name, filters in FILTERS.items():
            for call_name in calls:
                spec = STANDARD_CALLS[call_name]
                body = {**spec, "period": "30d", "filters": filters}
                timings: list[float] = []
                response = await client.post("/v1/query", json=body)  # warm-up, not timed
                if response.status_code != 200:
                    raise SystemExit(f"{call_name} / {filter_name}: {response.status_code} {response.text}")
                for _ in range(runs):
                    started = time.perf_counter()
                    response = await client.post("/v1/query", json=body)
                    timings.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                meta = response.json()["meta"]
                figures.append(
                    {
                        "call": call_name,
                        "filter": filter_name,
                        "p50_ms": statistics.median(timings),
                        "p95_ms": percentile(timings, 0.95),
                        "source": meta["source"],
                        "first_row": response.json()["results"][:1],
                    }
                )
                log(
                    f"  {call_name:<18} {filter_name:<17} p50 {figures[-1]['p50_ms']:7.1f} ms"
                    f"  p95 {figures[-1]['p95_ms']:7.1f} ms  ({meta['source']})"
                )
    return figures


async def measure_shapes(base_url: str, secret_key: str, runs: int, only: str = "") -> list[dict[str, Any]]:
    """Every shape of `shapes` (whose name holds `only`), one warm-up then `runs` timed calls; a
    failure is recorded, not raised."""
    headers = {"Authorization": f"Bearer {secret_key}"}
    figures: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        for goal in BENCH_GOALS:
            saved = await client.post("/v1/goals", json=goal)
            if saved.status_code not in (201, 409):  # 409: saved by an earlier run
                raise RuntimeError(f"cannot save the goal {goal}: HTTP {saved.status_code} {saved.text}")
        for period in ("30d", "12mo"):
            for name, (path, body) in shapes(period).items():
                if not any(part in name for part in only.split("|")):
                    continue
                timings: list[float] = []
                statuses: set[int] = set()
                started = time.perf_counter()
                response = await client.post(path, json=body)  # warm-up, not timed
                # A shape slower than a second (raw events, or a timeout) is timed once, not `runs` times.
                slow = time.perf_counter() - started > 1.0
                for _ in range(1 if slow else runs):
                    started = time.perf_counter()
                    response = await client.post(path, json=body)
                    timings.append((time.perf_counter() - started) * 1000)
                    statuses.add(response.status_code)
                answer = response.json() if response.status_code == 200 else {}
                source = answer.get("meta", {}).get("source", "events") if answer else f"HTTP {response.status_code}"
                figures.append(
                    {
                        "call": name,
                        "filter": "",
                        "p50_ms": statistics.median(timings),
                        "p95_ms": percentile(timings, 0.95),
                        "source": source,
                        "statuses": sorted(statuses),
                        "runs": len(timings),
                    }
                )
                log(
                    f"  {name:<48} p50 {figures[-1]['p50_ms']:7.1f} ms  p95 {figures[-1]['p95_ms']:7.1f} ms"
                    f"  ({source}, HTTP {sorted(statuses)})"
                )
    return figures


async def measure_without_weeks(
    admin_settings: AdminDatabaseSettings, project_id: int, base_url: str, secret_key: str, runs: int
) -> list[dict[str, Any]]:
    """Top pages again with the weekly page rows hidden, so every day is read from the daily rows.

    The weeks' stamps are taken out for the measurement and put back after it. The query
    service's refresher must be off (the Makefile's bench stack runs it with interval 0), or it
    would rebuild the weeks meanwhile.
    """
    async with admin_engine(admin_settings) as engine:
        async with engine.begin() as connection:
            result = await connection.execute(
                text("DELETE FROM query_rollup_weeks WHERE project_id = :project_id RETURNING week, days_built_at"),
                {"project_id": project_id},
            )
            stamps = [
                {"project_id": project_id, "week": row.week, "days_built_at": row.days_built_at} for row in result
            ]
        log(f"timing top pages with the {len(stamps)} weekly stamps hidden ...")
        try:
            return await measure(base_url, secret_key, runs, calls=("top pages",))
        finally:
            if stamps:
                async with engine.begin() as connection:
                    await connection.execute(
                        text(
                            "INSERT INTO query_rollup_weeks (project_id, week, days_built_at)"
                            " VALUES (:project_id, :week, :days_built_at)"
                        ),
                        stamps,
                    )


async def explain(admin_settings: AdminDatabaseSettings, project: dict[str, Any], names: list[str]) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the SQL the service runs for some standard calls, as it plans them."""
    async with admin_engine(admin_settings) as engine:
        for name in names:
            call_name, _, filter_name = name.partition("/")
            body = {**STANDARD_CALLS[call_name], "period": "30d", "filters": FILTERS[filter_name or "no filter"]}
            spec = msgspec.convert(body, QuerySpec)
            span = service.resolve_range(spec, TIMEZONE, datetime.now(UTC))
            query = planner.aggregate_query(int(project["id"]), TIMEZONE, spec, span)
            async with engine.begin() as connection:
                await connection.execute(text("SET TRANSACTION READ ONLY"))
                await repository.configure_transaction(connection)
                plan = await planner.plan(connection, query, span, QuerySettings())
                lines = await repository.explain(connection, query, plan)
            log(f"--- {name} ({'events' if plan is None else plan.cube.table})")
            log("\n".join(lines))


# The funnels whose stated intervals --funnel-errors checks: the bench's two, and three more of
# other orders, an event step and a shorter range (page steps unless "event:").
ERROR_FUNNELS: list[tuple[str, str, list[str]]] = [
    ("3 steps", "30d", FUNNEL_STEPS[:3]),
    ("8 steps", "30d", FUNNEL_STEPS),
    ("docs first", "30d", ["/docs", "/", "/pricing", "/signup", "/contact"]),
    ("signup event", "30d", ["/", "/pricing", "event:signup"]),
    ("7 days", "7d", ["/", "/features", "/pricing", "/about", "/signup"]),
]


def wilson_visitors_interval(sampled: int, rate: int) -> tuple[int, int]:
    """The interval the API stated before this check (Wilson's score throughout), for comparison."""
    p = 1 / rate
    b = 2 * sampled * p + 1.959964**2 * p * (1 - p)
    root = math.sqrt(max(0.0, b * b - 4 * p * p * sampled * sampled))
    return math.floor((b - root) / (2 * p * p)), math.ceil((b + root) / (2 * p * p))


async def funnel_errors(admin_settings: AdminDatabaseSettings, project: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of ERROR_FUNNELS exactly (no statement timeout), its visitors per step split by the
    sample hash (repository.funnel_hash_classes), and for every rate and every one of its r
    disjoint, equally likely samples (hash low bits = c; c = 0 is the one the API reads) the count
    that sample would give, the interval the API states for it, and whether the exact count is
    inside. The API's own sampled read is run too at each rate, and must equal class 0."""
    rows: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    async with admin_engine(admin_settings) as engine:
        for name, period, step_values in ERROR_FUNNELS:
            span = service.resolve_range(msgspec.convert({"period": period}, DateRangeFields), TIMEZONE, now)
            matches = [
                repository.FunnelStepMatch("event", value.removeprefix("event:"))
                if value.startswith("event:")
                else repository.FunnelStepMatch("page", value)
                for value in step_values
            ]
            async with engine.begin() as connection:
                await connection.execute(text("SET LOCAL statement_timeout = '900s'"))
                await repository.configure_transaction(connection)
                started = time.perf_counter()
                classes = await repository.funnel_hash_classes(
                    connection, int(project["id"]), span.start, span.end, matches, 3600
                )
                exact_ms = (time.perf_counter() - started) * 1000
            exact = [sum(step) for step in classes]
            log(f"  {name} ({period}): exact {exact} in {exact_ms:.0f} ms")
            for rate in repository.SAMPLE_RATES:
                async with engine.begin() as connection:
                    await repository.configure_transaction(connection)
                    started = time.perf_counter()
                    sampled = await repository.funnel(
                        connection, int(project["id"]), span.start, span.end, matches, 3600, sample_rate=rate
                    )
                    sampled_ms = (time.perf_counter() - started) * 1000
                by_class = [
                    [sum(step[h] for h in range(residue, 512, rate)) for residue in range(rate)] for step in classes
                ]
                if sampled != [step[0] for step in by_class]:
                    log(
                        f"  MISMATCH at 1/{rate}: the sampled read says {sampled},"
                        f" its hash class 0 {[c[0] for c in by_class]}"
                    )
                for index, truth in enumerate(exact):
                    for residue, count in enumerate(by_class[index]):
                        low, high = service.visitors_interval(count, rate)
                        old_low, old_high = wilson_visitors_interval(count, rate)
                        rows.append(
                            {
                                "funnel": f"{name} ({period})",
                                "rate": rate,
                                "class": residue,
                                "step": index + 1,
                                "exact": truth,
                                "sampled": count,
                                "estimate": count * rate,
                                "low": low,
                                "high": high,
                                "inside": low <= truth <= high,
                                "inside_before": old_low <= truth <= old_high,
                                "exact_ms": exact_ms,
                                "sampled_ms": sampled_ms if residue == 0 else None,
                            }
                        )
    return rows


def _share(hits: int, total: int) -> str:
    """hits/total in percent with its binomial standard error."""
    if not total:
        return "-"
    share = hits / total
    return f"{100 * share:.1f} ± {100 * math.sqrt(share * (1 - share) / total):.1f}"


def funnel_error_markdown(rows: list[dict[str, Any]]) -> str:
    """Coverage of the stated interval (now, and Wilson's before) by rate and by sampled count; the
    dispersion of the class counts against the binomial's (1 = no clustering); then the rows
    of the sample the API reads (class 0)."""
    lines = [
        "| rows | sampled visitors | inside now % | inside before (Wilson) % |",
        "| --- | --- | ---: | ---: |",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        bucket = "0" if r["sampled"] == 0 else "1-9" if r["sampled"] < 10 else "10-49" if r["sampled"] < 50 else ">= 50"
        for key in (f"all (1/{r['rate']})", f"any rate, {bucket}", "all"):
            groups.setdefault(key, []).append(r)
    for key in sorted(groups, key=lambda k: (k != "all", k)):
        group = [r for r in groups[key] if r["exact"] > 0]
        lines.append(
            f"| {len(group):,} | {key} | {_share(sum(r['inside'] for r in group), len(group))}"
            f" | {_share(sum(r['inside_before'] for r in group), len(group))} |"
        )
    lines += [
        "",
        "| funnel | step | exact | dispersion (var / binomial var) at 1/8, 1/64, 1/512 |",
        "| --- | ---: | ---: | --- |",
    ]
    cells: dict[tuple[str, int], dict[int, list[int]]] = {}
    for r in rows:
        cells.setdefault((r["funnel"], r["step"]), {}).setdefault(r["rate"], []).append(r["sampled"])
        cells[(r["funnel"], r["step"])].setdefault(0, [r["exact"]])
    for (funnel, step), by_rate in cells.items():
        truth = by_rate[0][0]
        ratios = []
        for rate in (8, 64, 512):
            counts = by_rate[rate]
            p = 1 / rate
            expected = truth * p * (1 - p)
            ratios.append(f"{statistics.pvariance(counts) / expected:.2f}" if expected else "-")
        lines.append(f"| {funnel} | {step} | {truth:,} | {', '.join(ratios)} |")
    lines += [
        "",
        "| funnel | sample | step | exact | estimate | error % | 95% interval | inside | sampled ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    lines += [
        f"| {r['funnel']} | 1/{r['rate']} | {r['step']} | {r['exact']:,} | {r['estimate']:,}"
        f" | {100 * (r['estimate'] - r['exact']) / r['exact'] if r['exact'] else 0.0:+.2f}"
        f" | {r['low']:,}-{r['high']:,} | {'yes' if r['inside'] else 'NO'} | {r['sampled_ms']:.0f} |"
        for r in rows
        if r["class"] == 0
    ]
    return "\n".join(lines)


async def count_events(admin_settings: AdminDatabaseSettings, project_id: int) -> tuple[int, int]:
    async with admin_engine(admin_settings) as engine, engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*) FILTER (WHERE project_id = :project_id), count(*) FROM events"),
            {"project_id": project_id},
        )
        own, total = result.one()
        return int(own), int(total)


def markdown(figures: list[dict[str, Any]], runs: int) -> str:
    lines = [
        f"| call | filter | p50 ms | p95 ms | source |  (runs per call: {runs})",
        "| --- | --- | ---: | ---: | --- |",
    ]
    lines += [
        f"| {f['call']} | {f['filter']} | {f['p50_ms']:.1f} | {f['p95_ms']:.1f} | {f['source']} |" for f in figures
    ]
    over = [f["call"] for f in figures if f["p95_ms"] > 300 or f["source"].startswith("HTTP")]
    lines.append(
        f"over 300 ms p95 or failed: {len(over)} of {len(figures)}" + (f" ({'; '.join(over)})" if over else "")
    )
    return "\n".join(lines)


async def main(arguments: argparse.Namespace) -> None:
    # The database URLs `sightline up` wrote for this data directory, under the real environment.
    for key, value in read_env_file(StackSettings.from_env().data_dir / "sightline.env").items():
        os.environ.setdefault(key, value)
    admin_settings = AdminDatabaseSettings.from_env()
    database = DatabaseSettings.from_env("query")
    project = await load(admin_settings, arguments.events, arguments.name)
    if arguments.explain:
        await explain(admin_settings, project, arguments.explain)
        return
    if arguments.funnel_errors:
        log("funnels exactly (no statement timeout) and from each visitor sample ...")
        load_before = os.getloadavg()
        rows = await funnel_errors(admin_settings, project)
        log(funnel_error_markdown(rows))
        log(f"load average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}")
        return
    own, total = await count_events(admin_settings, int(project["id"]))
    log(f"events: {own:,} in project {project['id']}, {total:,} in all projects")
    if arguments.no_build:
        log("not building the rollups (--no-build): timing what they hold now")
    else:
        await build_rollups(database)
    server = ServerSettings.from_env("query")
    base_url = f"http://{server.host}:{server.port}"
    log(f"timing {base_url}/v1/query, {arguments.runs} runs per call after one warm-up ...")
    load_before = os.getloadavg()
    figures = await measure(base_url, str(project["secretKey"]), arguments.runs)
    report = markdown(figures, arguments.runs)
    log(report)
    shape_figures: list[dict[str, Any]] = []
    if arguments.shapes:
        log(f"timing every shape, {arguments.shape_runs} runs each after one warm-up ...")
        shape_figures = await measure_shapes(
            base_url, str(project["secretKey"]), arguments.shape_runs, arguments.shape_filter
        )
        log(markdown(shape_figures, arguments.shape_runs))
    load_after = os.getloadavg()
    log(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    daily_only: list[dict[str, Any]] = []
    if arguments.compare_daily:
        daily_only = await measure_without_weeks(
            admin_settings, int(project["id"]), base_url, str(project["secretKey"]), arguments.runs
        )
        log("without the weekly rows (daily rows only):")
        log(markdown(daily_only, arguments.runs))
    if arguments.out:
        Path(arguments.out).write_text(
            json.dumps(
                {
                    "events": own,
                    "all_events": total,
                    "runs": arguments.runs,
                    "figures": figures,
                    "shapes": shape_figures,
                    "daily_only": daily_only,
                    "load_average_before": load_before,
                    "load_average_after": load_after,
                },
                indent=2,
            )
            + "\n"
        )
        log(f"figures written to {arguments.out}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000_000, help="events for the measured project")
    parser.add_argument("--name", default="bench-query", help="the measured project's name (noise: NAME-noise-N)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per call")
    parser.add_argument(
        "--explain",
        nargs="*",
        metavar="CALL[/FILTER]",
        help="only print the plans of these calls, e.g. 'top pages' 'overview/country is DE'",
    )
    parser.add_argument(
        "--compare-daily",
        action="store_true",
        help="then time top pages again with the weekly page rows hidden (daily rows only)",
    )
    parser.add_argument(
        "--funnel-errors",
        action="store_true",
        help="only compare the bench funnels exactly (no timeout, direct) with each visitor sample's estimate",
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="do not build the rollups or wait for them (time what they hold now; a shape whose rollup is not"
        " current reads events)",
    )
    parser.add_argument("--shapes", action="store_true", help="then time every shape the API accepts")
    parser.add_argument("--shape-runs", type=int, default=5, help="timed runs per shape")
    parser.add_argument(
        "--shape-filter",
        default="",
        metavar="TEXT",
        help="with --shapes: only the shapes whose name holds TEXT (or one of A|B|...)",
    )
    parser.add_argument("--out", default="/tmp/sightline-bench-query.json", help="JSON file for the figures")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
