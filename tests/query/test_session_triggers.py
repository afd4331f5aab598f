"""The sessions triggers on events (alembic 0710) at statement sizes a bulk load uses: one INSERT of
20k events, one that extends those sessions at both ends, one DELETE across thousands of
sessions. Every session row must equal what Python computes from the events left, on plain
Postgres and on Citus (SIGHTLINE_TEST_CITUS_WORKERS=2), where such statements once ran a worker
out of memory (docs/scaling.md).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness import DatabaseHarness
from tests.query.conftest import BERLIN, new_project

VISIT_COLUMNS = ("referrer_domain", "utm_source", "country", "browser", "os", "device_type")


@dataclass(frozen=True)
class Row:
    project_id: int
    session_id: str
    distinct_id: str
    occurred_at: datetime
    event_uuid: uuid.UUID
    name: str
    path: str
    referrer_domain: str | None
    utm_source: str | None
    country: str
    browser: str
    os: str
    device_type: str
    is_bot: bool


def make_rows(
    generator: random.Random, project_ids: list[int], sessions: int, start: datetime, prefix: str, spread_s: int
) -> list[Row]:
    """Sessions of 1-6 events a minute or so apart, started within spread_s of start (across Berlin's
    midnight), some with a signup, some bots, some with two events at the same instant."""
    rows: list[Row] = []
    for number in range(sessions):
        project_id = project_ids[number % len(project_ids)]
        first = start + timedelta(seconds=generator.randrange(spread_s))
        at = first
        for step in range(generator.randint(1, 6)):
            if step and generator.random() > 0.05:  # else the same instant as the one before
                at += timedelta(seconds=generator.randint(1, 120))
            rows.append(
                Row(
                    project_id=project_id,
                    session_id=f"{prefix}{number}",
                    distinct_id=f"visitor-{number % 700}",
                    occurred_at=at,
                    event_uuid=uuid.UUID(int=generator.getrandbits(128)),
                    name="signup" if step and generator.random() < 0.15 else "pageview",
                    path=f"/{generator.choice(['', 'pricing', 'docs', 'blog'])}",
                    referrer_domain=generator.choice([None, "google.com", "t.co"]),
                    utm_source=generator.choice([None, None, "newsletter"]),
                    country=generator.choice(["DE", "FR", "US"]),
                    browser=generator.choice(["Chrome", "Firefox"]),
                    os=generator.choice(["Linux", "Windows"]),
                    device_type=generator.choice(["desktop", "mobile"]),
                    is_bot=number % 41 == 0,
                )
            )
    return rows


def expected_sessions(rows: list[Row]) -> dict[tuple[int, str], tuple[Any, ...]]:
    """query_sessions by hand: the whole session's span and counts, the first event's visit
    attributes, the first and last pageview; (occurred_at, uuid) breaks ties; bots ignored."""
    by_session: dict[tuple[int, str], list[Row]] = {}
    for row in rows:
        if not row.is_bot:
            by_session.setdefault((row.project_id, row.session_id), []).append(row)
    expected = {}
    for key, events in by_session.items():
        events.sort(key=lambda row: (row.occurred_at, row.event_uuid))
        pageviews = [row for row in events if row.name == "pageview"]
        entry, exit_ = (pageviews[0], pageviews[-1]) if pageviews else (None, None)
        first = events[0]
        expected[key] = (
            min(row.distinct_id for row in events),
            first.occurred_at,
            first.event_uuid,
            events[-1].occurred_at,
            len(pageviews),
            len(events),
            *((None, None, None) if entry is None else (entry.path, entry.occurred_at, entry.event_uuid)),
            *((None, None, None) if exit_ is None else (exit_.path, exit_.occurred_at, exit_.event_uuid)),
            *(getattr(first, column) for column in VISIT_COLUMNS),
        )
    return expected


async def insert_in_one_statement(engine: AsyncEngine, rows: list[Row]) -> int:
    columns = list(Row.__dataclass_fields__)
    types = {
        "project_id": "bigint",
        "occurred_at": "timestamptz",
        "event_uuid": "uuid",
        "is_bot": "boolean",
    }
    names = ", ".join(columns)
    unnest = ", ".join(f"CAST(:{column} AS {types.get(column, 'text')}[])" for column in columns)
    async with engine.begin() as connection:
        result = await connection.execute(
            text(
                f"INSERT INTO events ({names}, url, domain)"
                f" SELECT *, 'https://example.com' || path, 'example.com' FROM unnest({unnest}) AS u({names})"
            ),
            {column: [getattr(row, column) for row in rows] for column in columns},
        )
    return result.rowcount


async def stored_sessions(engine: AsyncEngine, project_ids: list[int]) -> dict[tuple[int, str], tuple[Any, ...]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT project_id, session_id, distinct_id, started_at, first_uuid, ended_at, pageviews, events,"
                " entry_page, entry_at, entry_uuid, exit_page, exit_at, exit_uuid,"
                " referrer, utm_source, country, browser, os, device"
                " FROM query_sessions WHERE project_id = ANY(:projects)"
            ),
            {"projects": project_ids},
        )
        return {(row[0], row[1]): tuple(row[2:]) for row in result}


async def marked_days(engine: AsyncEngine, project_ids: list[int]) -> set[tuple[int, date]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT project_id, day FROM query_rollup_days WHERE project_id = ANY(:projects)"),
            {"projects": project_ids},
        )
        return {(row[0], row[1]) for row in result}


async def test_statements_of_thousands_of_events_give_exact_sessions(
    db: DatabaseHarness, engine: AsyncEngine, admin_engine: AsyncEngine
) -> None:
    projects = [int((await new_project(db))["id"]) for _ in range(3)]
    generator = random.Random(16)
    # 2026-01-20 22:00 Berlin onwards: many sessions cross local midnight.
    start = datetime(2026, 1, 20, 21, 0, tzinfo=UTC)
    first = make_rows(generator, projects, 6000, start, "s", spread_s=4 * 3600)
    assert len(first) >= 20_000
    assert await insert_in_one_statement(engine, first) == len(first)
    assert await stored_sessions(admin_engine, projects) == expected_sessions(first)

    # The same sessions again, earlier and later: new first events (visit attributes, entry) for
    # some, new exits for others; plus new sessions, in one statement.
    again = make_rows(random.Random(18), projects, 6000, start - timedelta(hours=1), "s", spread_s=6 * 3600)
    await insert_in_one_statement(engine, again)
    everything = first + again
    assert await stored_sessions(admin_engine, projects) == expected_sessions(everything)

    # One DELETE across thousands of sessions (an erasure of 100 visitors, and one path everywhere):
    # each touched session rebuilt from the events left, or gone with its last event.
    erased = {f"visitor-{number}" for number in range(100)}
    async with engine.begin() as connection:
        deleted = await connection.execute(
            text(
                "DELETE FROM events WHERE project_id = ANY(:projects)"
                " AND (distinct_id = ANY(:erased) OR path = '/blog')"
            ),
            {"projects": projects, "erased": sorted(erased)},
        )
    left = [row for row in everything if row.distinct_id not in erased and row.path != "/blog"]
    assert deleted.rowcount == len(everything) - len(left)
    assert await stored_sessions(admin_engine, projects) == expected_sessions(left)

    # Every local day an event was inserted or deleted on is marked for the rollups, and no other.
    assert await marked_days(admin_engine, projects) == {
        (row.project_id, row.occurred_at.astimezone(BERLIN).date()) for row in everything
    }


def test_every_citus_worker_runs_the_set_based_functions(db: DatabaseHarness) -> None:
    """A trigger of a distributed table runs the function as the worker has it: the migration's
    CREATE OR REPLACE must reach every worker, or the per-session functions of 0680 (and their
    memory growth) would stay there while the coordinator shows 0710's."""
    if db.citus is None:
        pytest.skip("workers exist on Citus only: SIGHTLINE_TEST_CITUS_WORKERS=2")
    fingerprint = (
        "SELECT string_agg(proname || ':' || md5(prosrc), ',' ORDER BY proname) FROM pg_proc"
        " WHERE proname IN ('query_sessions_note_inserts', 'query_sessions_note_deletes')"
    )
    on_coordinator = db.postgres.psql(fingerprint, database="sightline").strip()
    assert "sessions_table" in db.postgres.psql(
        "SELECT prosrc FROM pg_proc WHERE proname = 'query_sessions_note_inserts'", database="sightline"
    )
    assert db.citus.workers
    for worker in db.citus.workers:
        assert worker.psql(fingerprint, database="sightline").strip() == on_coordinator


_UPDATES = (
    "SELECT pg_stat_get_xact_tuples_updated('query_sessions'::regclass),"
    " pg_stat_get_xact_tuples_hot_updated('query_sessions'::regclass)"
)


async def _stored_hour_and_update_kind(engine: AsyncEngine, rows: list[Row]) -> tuple[datetime, int, int]:
    """Inserts rows in one statement and reads, in the same transaction, the session's
    ended_hour and how many updates of query_sessions the insert made, and how many of those
    were heap-only. (Postgres 15's xact counters hold what the backend has not reported yet,
    earlier transactions' included: the insert's are the difference.)"""
    columns = list(Row.__dataclass_fields__)
    async with engine.begin() as connection:
        updated_before, heap_only_before = (await connection.execute(text(_UPDATES))).one()
        await connection.execute(
            text(
                f"INSERT INTO events ({', '.join(columns)}, url, domain) VALUES"
                f" ({', '.join(':' + column for column in columns)}, 'https://example.com/', 'example.com')"
            ),
            [{column: getattr(row, column) for column in columns} for row in rows],
        )
        updated, heap_only = (await connection.execute(text(_UPDATES))).one()
        result = await connection.execute(
            text("SELECT ended_hour FROM query_sessions WHERE project_id = :project_id AND session_id = :session_id"),
            {"project_id": rows[0].project_id, "session_id": rows[0].session_id},
        )
        hour = result.scalar_one()
    return hour, updated - updated_before, heap_only - heap_only_before


async def test_a_batch_within_the_sessions_hour_rewrites_no_index_entry(
    db: DatabaseHarness, engine: AsyncEngine
) -> None:
    """Migration 1180: the sessions are indexed by the UTC hour they ended in, not by their end,
    so a batch that extends a session within that hour changes no indexed column, and its update
    is heap-only (HOT); one that carries it into the next hour moves ended_hour, and cannot be.
    Before 1180 no update of a session was heap-only. On Citus the update runs on a worker's
    shard (its counters are the worker's); the hours are checked there too."""
    project_id = int((await new_project(db))["id"])
    start = datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
    generator = random.Random(1180)

    def event(at: datetime) -> Row:
        return Row(
            project_id,
            "hot-session",
            "visitor",
            at,
            uuid.UUID(int=generator.getrandbits(128)),
            "pageview",
            "/",
            None,
            None,
            "DE",
            "Chrome",
            "Linux",
            "desktop",
            False,
        )

    ten = datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert (await _stored_hour_and_update_kind(engine, [event(start)]))[0] == ten
    hour, updated, heap_only = await _stored_hour_and_update_kind(engine, [event(start + timedelta(minutes=50))])
    assert hour == ten
    if db.citus is None:
        assert (updated, heap_only) == (1, 1)
    hour, updated, heap_only = await _stored_hour_and_update_kind(engine, [event(start + timedelta(minutes=56))])
    assert hour == ten + timedelta(hours=1)
    if db.citus is None:
        assert (updated, heap_only) == (1, 0)
