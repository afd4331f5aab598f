"""A day too large for one rebuild is built in pieces and ends as a rebuild leaves it.

rollup_repository.build_day_piece merges a day's events in bounded time ranges, one piece per
refresh, each committed. Here the bounds are made small (a day of a few hundred events, a
rebuild refused over 100, pieces of 50) so every path runs on hand-sized data; the rows are then
compared, table by table, with those a plain rebuild from scratch writes.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.query import rollup_repository
from services.query.planner import local_midnight
from services.query.tasks import refresh_round
from services.query.vocabulary import CUBES, VISIT_DIMENSIONS
from tests.harness import DatabaseHarness
from tests.query.conftest import Event, berlin, build_rollups, insert_events, main_events, new_project
from tests.query.test_rollup_increments import cube_rows, rebuilt_from_scratch

Rows = dict[str, list[tuple[Any, ...]]]
DAY = "2026-01-13"
THE_DAY = date(2026, 1, 13)
BERLIN = ZoneInfo("Europe/Berlin")
PAGES = ["/", "/pricing", "/docs", "/blog", "/checkout", "/about"]
COUNTRIES = ["DE", "US", "FR", None]


def big_day(seed: int = 7) -> list[Event]:
    """~400 events on Jan 13 (Berlin): 70 sessions of 1-10 events spread over the day, a few
    custom events and bots, several events at one instant, and sessions crossing both midnights
    (one begun on Jan 12, one going on into Jan 14)."""
    rng = random.Random(seed)
    events: list[Event] = []
    for index in range(70):
        visitor = f"v{index % 45}"
        start = berlin(f"{DAY}T00:05:00") + timedelta(minutes=rng.randrange(0, 23 * 60))
        visit = {"country": rng.choice(COUNTRIES), "browser": rng.choice(["Chrome", "Firefox"])}
        at = start
        for step in range(rng.randrange(1, 11)):
            name = "signup" if rng.random() < 0.1 else "pageview"
            events.append(Event(visitor, f"big{index}", at, rng.choice(PAGES), name=name, **visit))  # type: ignore[arg-type]
            at += timedelta(seconds=rng.randrange(0, 200) if step else 30)
    # Twelve events at one instant (more than a piece's worth at 10 a piece).
    tied = berlin(f"{DAY}T15:00:00")
    events += [Event(f"t{index}", f"tied{index}", tied, "/tied") for index in range(12)]
    events += [
        Event("bot", "sbot", berlin(f"{DAY}T11:00:00") + timedelta(seconds=s), "/", is_bot=True) for s in range(5)
    ]
    # Begun on Jan 12, going on into Jan 13; begun on Jan 13, going on into Jan 14.
    events += [
        Event("w1", "cross-in", berlin("2026-01-12T23:55:00"), "/", country="GB"),
        Event("w1", "cross-in", berlin(f"{DAY}T00:03:00"), "/pricing", country="GB"),
        Event("w1", "cross-in", berlin(f"{DAY}T00:04:00"), "/docs", name="signup", country="GB"),
        Event("w2", "cross-out", berlin(f"{DAY}T23:50:00"), "/", country="US"),
        Event("w2", "cross-out", berlin("2026-01-14T00:10:00"), "/late-page", country="US"),
        Event("w2", "cross-out", berlin("2026-01-14T00:11:00"), "/late-page", name="purchase", country="US"),
    ]
    return events


async def every_row(engine: AsyncEngine, project_id: int) -> Rows:
    """The cubes (as cube_rows), the session days, the sessions' folded rows, the exit-page items
    and the day markers of the project; the session days' arrays as stored (each page and name
    once, sorted, since 1210), the folded rows' compared as sets."""
    rows = await cube_rows(engine, project_id)
    visits = ", ".join(VISIT_DIMENSIONS)
    latest = "SELECT max(day) FROM query_rollup_days WHERE project_id = :project_id"
    statements = {
        "session_days": (
            f"SELECT day::text, session_id, distinct_id, pageviews, events, exit_page, {visits},"
            ' ARRAY(SELECT x FROM unnest(pages) AS x ORDER BY x COLLATE "C"), event_names, event_counts'
            " FROM query_rollup_session_days WHERE project_id = :project_id"
        ),
        "folded": (
            "SELECT session_id, day::text, started_at, first_uuid, entry_uuid, ended_at, pageviews, events,"
            f" entry_page, exit_page, {visits}, ARRAY(SELECT DISTINCT x FROM unnest(pages) x ORDER BY 1),"
            " ARRAY(SELECT DISTINCT x FROM unnest(domains) x ORDER BY 1),"
            " ARRAY(SELECT DISTINCT x FROM unnest(event_names) x ORDER BY 1)"
            " FROM query_rollup_sessions_folded WHERE project_id = :project_id"
        ),
        # Of the days before the latest (a merged latest day's are left stale, and not read).
        "exit_items": (
            "SELECT day::text, exit_page, kind, value, hll_cardinality(visitors)::bigint, events"
            f" FROM query_rollup_exit_items WHERE project_id = :project_id AND day < ({latest})"
        ),
        "days": (
            f"SELECT day::text, built_changes = changes, exit_items_stale AND day < ({latest}), piece_until,"
            " piece_changes, piece_events FROM query_rollup_days WHERE project_id = :project_id"
        ),
    }
    async with engine.connect() as connection:
        for name, statement in statements.items():
            result = await connection.execute(text(statement), {"project_id": project_id})
            rows[name] = sorted((tuple(row) for row in result), key=repr)
    return rows


async def rebuilt_plainly(engine: AsyncEngine, project: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Rows:
    """Every day rebuilt from scratch in one go (the bounds back to theirs), then the rows."""
    monkeypatch.setattr(rollup_repository, "MAX_REBUILD_EVENTS", 10**9)
    await rebuilt_from_scratch(engine, project)
    await build_rollups(engine, project)
    return await every_row(engine, int(project["id"]))


def small_pieces(monkeypatch: pytest.MonkeyPatch, piece_events: int = 50) -> None:
    monkeypatch.setattr(rollup_repository, "MAX_REBUILD_EVENTS", 100)
    monkeypatch.setattr(rollup_repository, "PIECE_EVENTS", piece_events)


async def piece_state(engine: AsyncEngine, project_id: int) -> tuple[Any, ...]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT built_changes, piece_until, piece_events FROM query_rollup_days"
                " WHERE project_id = :project_id AND day = :day"
            ),
            {"project_id": project_id, "day": THE_DAY},
        )
        return tuple(result.one())


async def rounds_until_built(engine: AsyncEngine, project_id: int, limit: int = 40) -> list[Any]:
    """Refresh rounds until the day is built; the pieces each round built."""
    pieces: list[Any] = []
    for _ in range(limit):
        outcome = await refresh_round_with_pieces(engine, project_id)
        pieces += outcome
        if (await piece_state(engine, project_id))[0] is not None:
            return pieces
    raise AssertionError("the day was not built")


async def refresh_round_with_pieces(engine: AsyncEngine, project_id: int) -> list[Any]:
    """One refresh of the project (as a round runs it), returning its pieces."""
    project = rollup_repository.ProjectToRefresh(project_id, "Europe/Berlin")
    async with engine.begin() as connection:
        outcome = await rollup_repository.refresh_project(connection, project, 100)
    assert outcome is not None
    return list(outcome.pieces)


@pytest.mark.parametrize("piece_events", [50, 10])
async def test_a_day_built_in_pieces_equals_its_rebuild(
    db: DatabaseHarness, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, piece_events: int
) -> None:
    """Pieces of 50, and of 10 (the twelve events at one instant split across two pieces)."""
    project = await new_project(db)
    project_id = int(project["id"])
    day_events = big_day()
    await insert_events(engine, project_id, [*main_events(), *day_events])
    small_pieces(monkeypatch, piece_events)
    pieces = await rounds_until_built(engine, project_id, limit=100)
    in_day = sum(
        1
        for event in [*main_events(), *day_events]
        if not event.is_bot and event.occurred_at.astimezone(BERLIN).date() == THE_DAY
    )
    # Not vacuous: the day took several pieces, none over its bound (bots count toward it, and
    # the last also stages the events after the day, not counted here); every event once.
    assert len(pieces) >= in_day // piece_events
    assert all(piece.day == THE_DAY for piece in pieces)
    assert [piece.done for piece in pieces] == [False] * (len(pieces) - 1) + [True]
    assert not any(piece.restarted for piece in pieces)
    assert all(piece.piece_events <= piece_events for piece in pieces)
    assert pieces[-1].events == in_day
    # The other days (a few events) were rebuilt at the first refresh; the rest merge nothing.
    await build_rollups(engine, project)
    pieced = await every_row(engine, project_id)
    assert all(pieced[cube.table] for cube in CUBES)
    assert pieced["exit_items"]
    assert pieced["session_days"]
    assert pieced["folded"]
    assert pieced == await rebuilt_plainly(engine, project, monkeypatch)


async def test_a_failed_piece_keeps_the_pieces_before_it(
    db: DatabaseHarness, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A piece that fails (a timeout, the database restarting) rolls back alone: the next
    refresh goes on from the last piece committed."""
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, [*main_events(), *big_day()])
    small_pieces(monkeypatch)
    for _ in range(3):
        await refresh_round_with_pieces(engine, project_id)
    before = await piece_state(engine, project_id)
    assert before[0] is None
    assert before[1] is not None
    assert before[2] >= 100

    async def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("canceling statement due to statement timeout")

    with monkeypatch.context() as patched:
        patched.setattr(rollup_repository, "_merge_staged", fails)
        with pytest.raises(RuntimeError):
            await refresh_round(engine, 100, project_id)
    assert await piece_state(engine, project_id) == before
    pieces = await rounds_until_built(engine, project_id)
    assert pieces[0].events - pieces[0].piece_events == before[2]
    await build_rollups(engine, project)
    assert await every_row(engine, project_id) == await rebuilt_plainly(engine, project, monkeypatch)


async def test_a_delete_or_an_event_behind_the_pieces_starts_the_day_over(
    db: DatabaseHarness, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete bumps the day's `changes`: its next piece starts from emptied rollups. An event
    committed behind the pieces (a second load) is not in any piece: the last piece finds the
    day's events and its session days apart, and the day starts over. Either way it ends as its
    rebuild."""
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, [*main_events(), *big_day()])
    small_pieces(monkeypatch)
    for _ in range(3):
        await refresh_round_with_pieces(engine, project_id)
    async with engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM events WHERE project_id = :project_id AND session_id = 'cross-in'"),
            {"project_id": project_id},
        )
    restarted = await refresh_round_with_pieces(engine, project_id)
    assert restarted[0].events == restarted[0].piece_events  # from empty again
    # Behind the pieces: early on the day, a new session and one more event of a session there.
    behind = [
        Event("late1", "late-session", berlin(f"{DAY}T00:01:00"), "/behind"),
        Event("w9", "big0", berlin(f"{DAY}T00:02:00"), "/behind"),
    ]
    await insert_events(engine, project_id, behind)
    pieces = await rounds_until_built(engine, project_id, limit=60)
    assert any(piece.restarted for piece in pieces)
    assert pieces[-1].done
    await build_rollups(engine, project)
    assert await every_row(engine, project_id) == await rebuilt_plainly(engine, project, monkeypatch)


async def test_the_refresher_logs_how_far_a_day_in_pieces_got(
    db: DatabaseHarness, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, big_day())
    small_pieces(monkeypatch)
    with caplog.at_level(logging.INFO, logger="services.query.tasks"):
        first = await refresh_round(engine, 100, project_id)
        assert first.pieces_advanced
        assert first.rebuild_s > 0
        await build_rollups(engine, project)
    messages = [record.getMessage() for record in caplog.records]
    assert any("too large for one rebuild, built in pieces: a piece of" in message for message in messages)
    assert any("% of the day's time" in message for message in messages)
    assert any(f"rollup day {DAY} of project {project_id} built in pieces" in message for message in messages)
    assert (await piece_state(engine, project_id))[0] is not None


async def test_a_piece_ends_a_minute_before_now_but_the_last(
    db: DatabaseHarness, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live events arrive seconds after their time: a piece but the day's last stops
    PIECE_SETTLE before now, so an event committed after it is not behind it."""
    project = await new_project(db)
    project_id = int(project["id"])
    now = datetime.now(UTC)
    midnight = local_midnight(now.astimezone(BERLIN).date(), "Europe/Berlin")
    if now - midnight < timedelta(minutes=2):
        pytest.skip("too close to midnight in Berlin for a few minutes of today's events")
    # 150 events over the last few minutes of today (Berlin), the newest 2 s old.
    span = min(timedelta(minutes=5), now - midnight - timedelta(seconds=5))
    times = [now - timedelta(seconds=2) - span * index / 150 for index in range(150)]
    await insert_events(
        engine, project_id, [Event(f"v{i}", f"s{i // 3}", at, f"/p{i % 7}") for i, at in enumerate(times)]
    )
    small_pieces(monkeypatch)
    # A bulk load (not merged from empty as a new day of live events is): its day is rebuilt.
    monkeypatch.setattr(rollup_repository, "MAX_MERGED_EVENTS", 1)
    monkeypatch.setattr(rollup_repository, "BULK_SHARE_OF_DAYS", 0.0)
    day = now.astimezone(BERLIN).date()
    pieces: list[Any] = []
    for _ in range(10):
        pieces += await refresh_round_with_pieces(engine, project_id)
        if pieces and pieces[-1].done:
            break
    assert pieces[-1].done
    assert pieces[-1].events == 150
    assert all(piece.day == day for piece in pieces)
    for piece in pieces[:-1]:
        assert piece.until <= datetime.now(UTC) - rollup_repository.PIECE_SETTLE
    if span > rollup_repository.PIECE_SETTLE + timedelta(seconds=30):
        # More than the last minute's events: the pieces before the last stopped at the minute.
        assert len(pieces) >= 2
    await build_rollups(engine, project)
    assert await every_row(engine, project_id) == await rebuilt_plainly(engine, project, monkeypatch)


async def test_a_person_erased_while_their_day_is_in_pieces_is_in_no_rollup_after(
    db: DatabaseHarness, engine: AsyncEngine, admin_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An erasure purges the day's rows (pieces included) and bumps its `changes`: the pieces
    start over without the person, and the day ends as its rebuild."""
    from services.replay.erasure import erase_person

    project = await new_project(db)
    project_id = int(project["id"])
    await insert_events(engine, project_id, [*main_events(), *big_day()])
    small_pieces(monkeypatch)
    for _ in range(3):
        await refresh_round_with_pieces(engine, project_id)
    person = {"project_id": project_id, "distinct_id": "v3"}
    held = (
        "SELECT count(*) FROM query_rollup_session_days WHERE project_id = :project_id AND distinct_id = :distinct_id"
    )
    async with engine.connect() as connection:
        assert (await connection.execute(text(held), person)).scalar_one() > 0  # in a piece already
    async with admin_engine.begin() as connection:
        await erase_person(connection, project_id, "v3")
    pieces = await rounds_until_built(engine, project_id, limit=60)
    assert pieces[-1].done
    await build_rollups(engine, project)
    async with engine.connect() as connection:
        assert (await connection.execute(text(held), person)).scalar_one() == 0
        # v3's sessions: s4 (main_events) and big3, big48 (big_day's visitors cycle through 45).
        folded = await connection.execute(
            text(
                "SELECT count(*) FROM query_rollup_sessions_folded WHERE project_id = :project_id"
                " AND session_id = ANY(CAST(:sessions AS text[]))"
            ),
            {"project_id": project_id, "sessions": ["s4", "big3", "big48"]},
        )
        assert folded.scalar_one() == 0
    assert await every_row(engine, project_id) == await rebuilt_plainly(engine, project, monkeypatch)
