"""The query service's background work: the rollup refresher.

It merges what arrived into each project's days (and rebuilds the days that need it), then the
complete weeks whose days changed, one transaction of its own per project and per week (the one
writer of the query service; requests only read). It runs in every query worker, started by the
app's lifespan (a per-project advisory lock keeps two from refreshing the same project), and as
`sightline rollup`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.app import Lifespan, running_in_background
from services.common.db import create_engine, set_statement_timeout
from services.common.settings import DatabaseSettings
from services.query import goal_pairs_repository, rollup_repository
from services.query.settings import QuerySettings

logger = logging.getLogger(__name__)

# Rebuilding one busy day reads a few hundred thousand events; the requests' timeout is too tight.
REBUILD_STATEMENT_TIMEOUT_MS = 120_000


@dataclass(frozen=True)
class RoundOutcome:
    refreshed: int  # days merged or rebuilt (or a piece built), weeks, goal pair days and retention weeks rebuilt
    rebuild_s: float  # wall time of the project refreshes that rebuilt a day (or a piece), and of the weeks rebuilt
    pieces_advanced: bool = False  # a day too large for one rebuild got a piece further (not started over)


async def refresh_rollups(engine: AsyncEngine, days_per_round: int, project_id: int | None = None) -> int:
    """Merge every project's pending events and rebuild up to days_per_round unbuilt days per
    project, then the weeks they complete, a few days' goal pairs (migration 1000), then as many
    stale retention weeks; return how many days and weeks were refreshed."""
    return (await refresh_round(engine, days_per_round, project_id)).refreshed


async def refresh_round(engine: AsyncEngine, days_per_round: int, project_id: int | None = None) -> RoundOutcome:
    """refresh_rollups, also telling how long its rebuilds took (the refresher spaces rounds out
    by that time only: a merge costs in proportion to what arrived, so delaying it saves nothing)."""
    async with engine.begin() as connection:
        projects = await rollup_repository.projects_to_refresh(connection, project_id)
    rebuilt = 0
    rebuild_s = 0.0
    pieces_advanced = False
    for project in projects:
        started = time.monotonic()
        try:
            async with engine.begin() as connection:
                await set_statement_timeout(connection, REBUILD_STATEMENT_TIMEOUT_MS)
                outcome = await rollup_repository.refresh_project(connection, project, days_per_round)
        except rollup_repository.DaysBusy:
            # Rolled back: the pending rows it took are there again for the next round.
            logger.info("rollup refresh of project %s postponed: a day is busy", project.project_id)
            continue
        if outcome is not None:
            rebuilt += outcome.days + len(outcome.pieces)
            if outcome.rebuilt_days or outcome.pieces:
                rebuild_s += time.monotonic() - started
            pieces_advanced |= any(not piece.restarted for piece in outcome.pieces)
            for piece in outcome.pieces:
                log_piece(project.project_id, piece, time.monotonic() - started)
    async with engine.begin() as connection:
        weeks = await rollup_repository.weeks_to_build(connection, days_per_round, project_id)
    for week in weeks:
        started = time.monotonic()
        async with engine.begin() as connection:
            await set_statement_timeout(connection, REBUILD_STATEMENT_TIMEOUT_MS)
            if await rollup_repository.rebuild_week(connection, project_id=week.project_id, week=week.week):
                rebuilt += 1
                rebuild_s += time.monotonic() - started
    # The goal pairs (migration 1000) of days whose pairs lag their session days or goal pages.
    async with engine.begin() as connection:
        goal_pair_days = await goal_pairs_repository.days_to_remake(
            connection, min(days_per_round, goal_pairs_repository.REMAKE_DAYS_PER_ROUND), project_id
        )
    for remade in goal_pair_days:
        started = time.monotonic()
        async with engine.begin() as connection:
            await set_statement_timeout(connection, REBUILD_STATEMENT_TIMEOUT_MS)
            if await goal_pairs_repository.remake(connection, remade.project_id, remade.day):
                rebuilt += 1
                rebuild_s += time.monotonic() - started
    # Retention weeks last: a week's stamp is the latest build among the days up to its Sunday.
    async with engine.begin() as connection:
        retention_weeks = await rollup_repository.retention_weeks_to_build(connection, days_per_round, project_id)
    for week in retention_weeks:
        started = time.monotonic()
        async with engine.begin() as connection:
            await set_statement_timeout(connection, REBUILD_STATEMENT_TIMEOUT_MS)
            if await rollup_repository.rebuild_retention_week(connection, project_id=week.project_id, week=week.week):
                rebuilt += 1
                rebuild_s += time.monotonic() - started
    return RoundOutcome(rebuilt, rebuild_s, pieces_advanced)


async def refresh_until_current(engine: AsyncEngine, days_per_round: int, project_id: int | None = None) -> int:
    """Rounds until a round rebuilds nothing (days held by another builder are theirs), at most
    enough rounds for the days changed at the start, not counting the rounds that build a day
    in pieces while it advances: under live ingest today keeps changing."""
    async with engine.connect() as connection:
        changed = await rollup_repository.count_days_to_build(connection, project_id)
    total = 0
    # Twice the rounds the days need: the weeks they complete are built in rounds of their own.
    rounds = 2 * (changed // days_per_round) + 2
    while rounds > 0:
        outcome = await refresh_round(engine, days_per_round, project_id)
        total += outcome.refreshed
        if outcome.refreshed == 0:
            break
        if not outcome.pieces_advanced:
            rounds -= 1
    return total


def log_piece(project_id: int, piece: rollup_repository.PieceProgress, took_s: float) -> None:
    """How far a day built in pieces got (build_day_piece)."""
    if piece.done:
        logger.info(
            "rollup day %s of project %s built in pieces: last piece of %d events, %d in all (%.1f s)",
            piece.day,
            project_id,
            piece.piece_events,
            piece.events,
            took_s,
        )
    elif piece.restarted:
        logger.warning(
            "rollup day %s of project %s, built in pieces, starts over after %d events: a session on it moved,"
            " or events arrived behind its pieces",
            piece.day,
            project_id,
            piece.events,
        )
    else:
        assert piece.until is not None
        share = (piece.until - piece.day_start) / (piece.day_end - piece.day_start)
        logger.info(
            "rollup day %s of project %s too large for one rebuild, built in pieces: a piece of %d events,"
            " %d so far, through %s (%.0f%% of the day's time) (%.1f s)",
            piece.day,
            project_id,
            piece.piece_events,
            piece.events,
            piece.until.isoformat(),
            100 * share,
            took_s,
        )


def rollup_engine(database: DatabaseSettings) -> AsyncEngine:
    """A small pool of its own whose client-side timeout outlasts a rebuild's statement timeout."""
    return create_engine(
        "query-rollup",
        replace(database, pool_size=1, max_overflow=0, command_timeout_s=REBUILD_STATEMENT_TIMEOUT_MS / 1000 + 10),
    )


async def rebuild_changed_days(database: DatabaseSettings, project_id: int | None = None) -> int:
    """`sightline rollup`: rounds until current."""
    engine = rollup_engine(database)
    try:
        return await refresh_until_current(engine, 10, project_id)
    finally:
        await engine.dispose()


def rollup_refresher(database: DatabaseSettings, settings: QuerySettings) -> Lifespan:
    """The lifespan that runs the refresher in the background while the app serves (unless its
    interval is 0)."""

    @asynccontextmanager
    async def refresher(app: Litestar) -> AsyncIterator[None]:
        if settings.rollup_interval_s <= 0:
            yield
            return
        async with running_in_background(run_refresher(database, settings), "rollup-refresher"):
            yield

    return refresher


async def run_refresher(database: DatabaseSettings, settings: QuerySettings) -> None:
    """Forever: rebuild changed days, then sleep. Errors are logged and retried next round."""
    engine = rollup_engine(database)
    try:
        while True:
            started = time.monotonic()
            try:
                rebuild_s = (await refresh_round(engine, settings.rollup_days_per_round)).rebuild_s
            except asyncio.CancelledError:
                raise
            except Exception:
                # A failed round (database restarting, a timeout) must not end the refresher;
                # the same days are still marked changed and are retried next round. Spaced
                # out by its whole time, as a rebuild.
                logger.exception("rollup refresh failed")
                rebuild_s = time.monotonic() - started
            await asyncio.sleep(pause_after_round(rebuild_s, settings))
    finally:
        await engine.dispose()


def pause_after_round(busy_s: float, settings: QuerySettings) -> float:
    """The interval, stretched so rebuilding takes at most rollup_max_busy_share of the time.

    busy_s is the round's rebuilding time (RoundOutcome.rebuild_s). A round merges what arrived
    since the last one, at a cost in proportion to it, so merging is never spaced out (a pause
    stretched by a merge only lets more pile up for the next); a round that rebuilds days (after
    a delete, a purge, a bulk load) costs in proportion to those days' events, and spacing rounds
    out caps that cost instead of letting it take a whole core.
    """
    share = min(1.0, max(settings.rollup_max_busy_share, 0.01))
    return max(settings.rollup_interval_s, busy_s * (1 - share) / share)
