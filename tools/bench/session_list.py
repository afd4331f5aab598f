"""`make bench-session-list`: the player's session list under every filter, at 100k sessions.

Starts its own throwaway Postgres + PgBouncer (migrated to head, so with the trigram indexes
of migrations 0610 and 0840), fills one project with N recorded sessions over 30 days (default 100,000)
and 5 pageview events per session (paths, referrers, UTM tags), as ingest stores them (each session's
distinct URLs in event_session_urls, as the writer records them), plus the same again in a second
project (a list must not slow down because another tenant is large), ANALYZEs, then times
the replay service's own list query (services/replay/repository.py, through PgBouncer, in a
read transaction as a request runs it) for each filter: p50, p95 and max over --runs runs.

    python -m tools.bench.session_list [--sessions 100000] [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from services.cli import admin
from services.cli.throwaway import throwaway_database
from services.common.db import create_admin_engine, create_engine, set_statement_timeout
from services.common.partition_repository import ensure_event_partitions
from services.common.settings import DatabaseSettings
from services.replay import repository
from services.replay.repository import SessionFilters

DAYS = 30
NOW = datetime.now(UTC).replace(microsecond=0)

# Sessions: paths drawn from 200 products and a few fixed pages; 1 in 1,000 visits /checkout/done.
_FILL = """
INSERT INTO replay_sessions (project_id, session_id, distinct_id, started_at, ended_at, active_ms, click_count,
    page_count, first_url, country, browser, os, device_type, chunk_count, total_bytes)
SELECT {project_id}, 's-' || n, 'v-' || (n % {visitors}),
       '{now}'::timestamptz - n * interval '{spacing_ms} milliseconds',
       '{now}'::timestamptz - n * interval '{spacing_ms} milliseconds' + ((n % 600) + 5) * interval '1 second',
       (n % 300) * 1000, n % 12, 1 + n % 6,
       'https://shop.example/' || (ARRAY['', 'pricing', 'blog/post-' || (n % 500), 'product/' || (n % 200)])[1 + n % 4],
       (ARRAY['DE', 'US', 'FR', 'GB', 'NL', 'BR'])[1 + n % 6],
       (ARRAY['Chrome', 'Safari', 'Firefox', 'Edge'])[1 + n % 4],
       (ARRAY['Windows', 'macOS', 'iOS', 'Android', 'Linux'])[1 + n % 5],
       (ARRAY['desktop', 'mobile', 'tablet', 'desktop', 'bot'])[1 + n % 5], 3, 9000
FROM generate_series(1, {sessions}) AS n;

INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url, domain, path,
    referrer, referrer_domain, utm_source, utm_medium, utm_campaign)
SELECT {project_id}, '{now}'::timestamptz - n * interval '{spacing_ms} milliseconds' + step * interval '20 second',
       gen_random_uuid(), 'pageview', 'v-' || (n % {visitors}), 's-' || n,
       'https://shop.example' || page.path || CASE WHEN step = 2 THEN '?utm_source=news' ELSE '' END,
       'shop.example', page.path,
       CASE WHEN source.domain IS NOT NULL THEN 'https://' || source.domain || '/' END, source.domain,
       CASE WHEN n % 10 = 3 THEN 'newsletter' END,
       CASE WHEN n % 10 = 3 THEN 'email' END,
       CASE WHEN n % 10 = 3 THEN 'launch-' || (n % 7) END
FROM generate_series(1, {sessions}) AS n, generate_series(0, 4) AS step,
     LATERAL (SELECT '/' || CASE WHEN n % 1000 = 0 AND step = 4 THEN 'checkout/done'
         ELSE (ARRAY['', 'pricing', 'blog/post-' || ((n + step) % 500),
                     'product/' || ((n * step) % 200)])[1 + (n + step) % 4]
     END AS path) AS page,
     -- 40% direct; 1 visit in 1,000 from a rare referrer.
     LATERAL (SELECT CASE WHEN n % 1000 = 11 THEN 'rare.example'
         ELSE (ARRAY[NULL, NULL, 'google.com', 'news.ycombinator.com', 'github.com'])[1 + n % 5]
     END AS domain) AS source;

INSERT INTO event_session_urls (project_id, session_id, distinct_id, url_hash, url, path, first_seen)
SELECT project_id, session_id, distinct_id, md5(url)::uuid, min(url), min(path), min(occurred_at)
FROM events WHERE project_id = {project_id}
GROUP BY project_id, session_id, distinct_id, md5(url)::uuid;
"""

FILTERS: dict[str, SessionFilters] = {
    "none (first page)": SessionFilters(),
    "urlContains matching nothing": SessionFilters(url_contains="no-such-page"),
    "urlContains rare (checkout/done, 1 in 1,000)": SessionFilters(url_contains="checkout/done"),
    "urlContains common (pricing)": SessionFilters(url_contains="pricing"),
    "urlContains 1 character (/)": SessionFilters(url_contains="/"),
    "urlContains + last 7 days": SessionFilters(url_contains="checkout/done", started_from=NOW - timedelta(days=7)),
    "country": SessionFilters(country="BR"),
    "browser": SessionFilters(browser="firefox"),
    "device": SessionFilters(device_type="tablet"),
    "bots included": SessionFilters(include_bots=True),
    "minDuration 10 min": SessionFilters(min_duration_ms=600_000),
    "distinctId": SessionFilters(distinct_id="v-77"),
    "date range (one day, 10 days ago)": SessionFilters(
        started_from=NOW - timedelta(days=10), started_before=NOW - timedelta(days=9)
    ),
    "country + device + urlContains": SessionFilters(country="DE", device_type="desktop", url_contains="product/1"),
    "page common (/pricing)": SessionFilters(page="/pricing"),
    "page rare (/checkout/done, 1 in 1,000)": SessionFilters(page="/checkout/done"),
    "page matching nothing": SessionFilters(page="/no-such-page"),
    "page home (/)": SessionFilters(page="/"),
    "referrer common (google.com)": SessionFilters(referrer="google.com"),
    "referrer rare (rare.example, 1 in 1,000)": SessionFilters(referrer="rare.example"),
    "referrer matching nothing": SessionFilters(referrer="no-such.example"),
    "utmSource (1 in 10)": SessionFilters(utm_source="newsletter"),
    "utmMedium + utmCampaign": SessionFilters(utm_medium="email", utm_campaign="launch-3"),
    "utmCampaign matching nothing": SessionFilters(utm_campaign="no-such-campaign"),
    "page + referrer + country": SessionFilters(page="/pricing", referrer="news.ycombinator.com", country="DE"),
}


async def fill(admin_settings: Any, project_id: int, sessions: int) -> None:
    engine = create_admin_engine(admin_settings)
    try:
        async with engine.begin() as connection:
            await ensure_event_partitions(connection, (NOW - timedelta(days=DAYS + 1)).date(), NOW.date())
            for statement in _FILL.strip().split(";\n\n"):
                # Only this module's own numbers are formatted into the statement.
                sql = statement.format(
                    project_id=project_id,
                    sessions=sessions,
                    visitors=max(1, sessions // 3),
                    now=NOW.isoformat(),
                    spacing_ms=DAYS * 86_400_000 // sessions,
                )
                await connection.execute(text(sql))
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("ANALYZE"))
    finally:
        await engine.dispose()


async def measure(service_url: str, project_id: int, runs: int) -> dict[str, dict[str, float]]:
    engine = create_engine("bench", DatabaseSettings(url=service_url, pool_size=2))
    figures: dict[str, dict[str, float]] = {}
    try:
        for name, filters in FILTERS.items():
            timings: list[float] = []
            rows = 0
            for _ in range(runs + 2):
                started = time.perf_counter()
                async with engine.connect() as connection, connection.begin():
                    await set_statement_timeout(connection, 10_000)
                    page = await repository.list_sessions(connection, project_id, filters, after=None, limit=50)
                timings.append((time.perf_counter() - started) * 1000)
                rows = len(page)
            timings = sorted(timings[2:])  # the first two warm the cache and the pool
            figures[name] = {
                "rows": rows,
                "p50": round(statistics.median(timings), 1),
                "p95": round(timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))], 1),
                "max": round(timings[-1], 1),
            }
            print(f"{name}: {figures[name]}", flush=True)
    finally:
        await engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions per project (default 100,000)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per filter (default 20)")
    arguments = parser.parse_args()
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="sightline-bench-list-", dir="/tmp"))
    root.chmod(0o755)
    try:
        with throwaway_database(root) as db:
            projects = [
                asyncio.run(admin.create_project(db.admin, name=f"bench-{n}", domains=["shop.example"], timezone="UTC"))
                for n in range(2)
            ]
            for project in projects:
                asyncio.run(fill(db.admin, int(str(project["id"])), arguments.sessions))
            figures = asyncio.run(measure(db.service_url, int(str(projects[0]["id"])), arguments.runs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{arguments.sessions:,} sessions and {5 * arguments.sessions:,} events per project, 2 projects;"
        f" {arguments.runs} runs per filter; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n"
    )
    print("| filter | rows | p50 | p95 | max |\n| --- | --- | --- | --- | --- |")
    for name, row in figures.items():
        print(f"| {name} | {row['rows']} | {row['p50']} ms | {row['p95']} ms | {row['max']} ms |")


if __name__ == "__main__":
    main()
