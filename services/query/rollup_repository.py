"""All SQL that builds the query rollups and tells which days are current. Callers own the transaction.

A day's rollup rows are what the query path computes for a day without rollups
(services/query/repository.py) from that day's raw events and the sessions that started on it
(`query_sessions`); a session's figures live on its start day. They are kept current by
merging (`refresh_project`, migrations 0730 and 0820): each refresh adds the rows of the events
inserted since the last one and replaces the touched sessions' rows (exit pages included), so
it costs in proportion to what arrived (and to the visitors of the exit pages sessions left);
days that cannot be corrected by adding (deletes, an earlier event arriving late, purges, days
never built) are rebuilt from their events (`rebuild_day`), except a new day whose every event
arrived since the last refresh, which is merged into empty rollups, and a day too large for one
rebuild, built by merging its events in bounded pieces, one per refresh (`build_day_piece`).
The steps are described above `refresh_project`.

Freshness: every inserting statement writes a `query_rollup_pending` row (the keys of its
events and their local `days`, migrations 0730 and 0800), committed with the events and taken
by the refresh that merges them, so a day has events not in its rollup exactly while a pending
row touches it. Inserts only create a day's marker (`query_rollup_days`) when it has none: an
existing marker is not locked, so one project's batches commit concurrently (issue #18). Deletes
bump the marker's `changes` and mark the day never built. A refresh reads every marker in the
statement that takes the pending rows, so the `changes` it records as built are those it saw.
A day is usable (`_USABLE_DAY`) when built, current or built less than max_staleness_s ago, and
no pending row touching it is older than max_staleness_s (the refresher takes every pending row
each round: an older one means the rollup misses events a query would count).

Weeks: once every day of a complete week (Monday to Sunday, before today) is current, the
week's page rows are unioned from the days' rows into `query_rollup_page_weeks`, and
`query_rollup_weeks.days_built_at` records the latest build among those days. A day rebuilt
afterwards has a later `built_at`, so the week stops being usable (its days are read instead)
until it is rebuilt in turn.

Erasure and retention remove rows derived from deleted events through
services/common/rollup_purge_repository.py, which takes the same per-day and per-week locks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.citus_repository import is_citus
from services.common.models.query_session import ended_at_or_after
from services.common.rollup_purge_repository import ROLLUP_LOCK_NAMESPACE, day_lock_key, week_lock_key, week_of
from services.query.repository import CUBE_METRIC_COLUMNS, configure_transaction, cube_select_sql, session_ctes
from services.query.vocabulary import (
    CUBES,
    DIMENSIONS,
    EXIT_PAGES_CUBE,
    HLL_LOG2M,
    PAGES_CUBE,
    VISIT_DIMENSIONS,
    Cube,
    grain_id,
)

# A day row of query_rollup_days (alias d) that queries may read: built; current, or current less
# than :max_staleness_s ago (deletes); and no event waiting for the refresher longer than that.
# The pending rows are filtered on the :project_id parameter, not on d.project_id, so Citus
# routes the statement to the project's shard (see usable_weeks).
_USABLE_DAY = (
    "d.built_changes IS NOT NULL"
    " AND (d.built_changes = d.changes OR d.built_at > now() - make_interval(secs => :max_staleness_s))"
    " AND NOT EXISTS (SELECT FROM query_rollup_pending p WHERE p.project_id = :project_id"
    " AND d.day = ANY(p.days) AND p.created_at < now() - make_interval(secs => :max_staleness_s))"
)
# A day row (alias d) whose rollup holds every committed event: nothing pending touches it.
_NOTHING_PENDING = (
    "NOT EXISTS (SELECT FROM query_rollup_pending p WHERE p.project_id = :project_id AND d.day = ANY(p.days))"
)


@dataclass(frozen=True)
class WeekToBuild:
    project_id: int
    week: date  # the Monday


async def day_states(
    connection: AsyncConnection, project_id: int, date_from: date, date_to: date, max_staleness_s: float
) -> dict[date, bool]:
    """The days of the range that hold events (they have a marker), each with whether its rollup
    is usable: current, or current less than max_staleness_s ago (`_USABLE_DAY`). A day without a marker has
    never had an event (or lost its last one), so nothing needs computing for it."""
    result = await connection.execute(
        text(
            f"SELECT d.day, coalesce({_USABLE_DAY}, false) FROM query_rollup_days d"
            " WHERE d.project_id = :project_id AND d.day BETWEEN :date_from AND :date_to"
        ),
        {"project_id": project_id, "date_from": date_from, "date_to": date_to, "max_staleness_s": max_staleness_s},
    )
    return {row[0]: bool(row[1]) for row in result}


async def usable_weeks(
    connection: AsyncConnection, project_id: int, date_from: date, date_to: date, max_staleness_s: float
) -> set[date]:
    """Mondays of the weeks inside [date_from, date_to] whose weekly rows equal their days' rows.

    Every day of such a week that has events is usable, and none was rebuilt after the week.
    A day without a query_rollup_days row has never had an event. The subqueries name the
    project by the parameter, not by w.project_id: Citus routes a statement to one shard only
    when each distributed table in it is filtered on the constant (with the correlation, it ran
    the statement on every shard).
    """
    result = await connection.execute(
        text(
            "SELECT w.week FROM query_rollup_weeks w"
            " WHERE w.project_id = :project_id AND w.week >= :date_from AND w.week + 6 <= :date_to"
            " AND w.days_built_at = (SELECT max(d.built_at) FROM query_rollup_days d"
            " WHERE d.project_id = :project_id AND d.day BETWEEN w.week AND w.week + 6)"
            " AND NOT EXISTS (SELECT FROM query_rollup_days d"
            " WHERE d.project_id = :project_id AND d.day BETWEEN w.week AND w.week + 6"
            f" AND NOT ({_USABLE_DAY}))"
        ),
        {"project_id": project_id, "date_from": date_from, "date_to": date_to, "max_staleness_s": max_staleness_s},
    )
    return set(result.scalars())


# More events than this waiting for one project, and more than BULK_SHARE_OF_DAYS of the events
# the days they fall on already hold, are not merged: their days are rebuilt. A merge costs more
# per event than a rebuild, but a rebuild reads the whole day: under live ingest a busy day is
# merged however many events waited (a fixed threshold rebuilt a 600k-event day for 236k new
# events, and again each round after, docs/benchmarks.md), while a bulk load into a small or
# empty day is still rebuilt.
MAX_MERGED_EVENTS = 200_000
BULK_SHARE_OF_DAYS = 0.5
# A day to rebuild holding more events than this is built in pieces instead (build_day_piece):
# one rebuild reads the whole day in statements that must end within the refresher's statement
# timeout (tasks.REBUILD_STATEMENT_TIMEOUT_MS, 120 s), and on the 2-core machine a day of ~1.5-2
# million events did not (closing note 7: a 6-million-event day cancelled every round, its
# queries left on raw events). Each piece merges at most PIECE_EVENTS of the day's events, in
# time order, one piece per refresh, each committed (docs/benchmarks.md, "A day too large for one
# rebuild"). A piece ends no later than PIECE_SETTLE before now, unless it is the day's last:
# an event committed after a piece with a time before the piece's end would be missed (the final
# count restarts the day), and live events arrive a few seconds after their time.
MAX_REBUILD_EVENTS = 1_000_000
PIECE_EVENTS = 200_000
PIECE_SETTLE = timedelta(seconds=60)


@dataclass(frozen=True)
class ProjectToRefresh:
    project_id: int
    timezone: str


@dataclass(frozen=True)
class RefreshOutcome:
    merged_days: int
    rebuilt_days: int
    merged_events: int
    # Days built in pieces (too large for one rebuild), a piece each this refresh.
    pieces: tuple[PieceProgress, ...] = ()

    @property
    def days(self) -> int:
        return self.merged_days + self.rebuilt_days


@dataclass(frozen=True)
class PieceProgress:
    """One piece of a day built in pieces (build_day_piece)."""

    day: date
    piece_events: int  # events this piece merged
    events: int  # events merged into the day since its first piece
    until: datetime | None  # the day's events before (until, until_uuid) are built (None: done, or starting over)
    until_uuid: UUID | None
    done: bool  # the day is built (its last piece, checked against the day's events)
    restarted: bool  # the day starts over next refresh (a session moved, or an event was missed)
    day_start: datetime
    day_end: datetime


class DaysBusy(Exception):
    """Another builder, or an erasure, holds one of the days; the caller rolls back (the pending
    rows taken come back) and the project is refreshed next round."""


async def projects_to_refresh(connection: AsyncConnection, project_id: int | None = None) -> list[ProjectToRefresh]:
    """Projects with events not yet merged or days not current (or just this project)."""
    if project_id is not None:
        result = await connection.execute(
            text("SELECT project_id, timezone FROM projects WHERE project_id = :project_id"),
            {"project_id": project_id},
        )
    else:
        result = await connection.execute(
            text(
                "SELECT p.project_id, p.timezone FROM projects p WHERE p.project_id IN ("
                " SELECT project_id FROM query_rollup_pending UNION"
                " SELECT project_id FROM query_rollup_days WHERE built_changes IS DISTINCT FROM changes)"
                " ORDER BY 1"
            )
        )
    return [ProjectToRefresh(row.project_id, row.timezone) for row in result]


async def count_days_to_build(connection: AsyncConnection, project_id: int | None = None) -> int:
    """Days not current: changed by deletes or never built, or touched by pending events. Two
    statements whose (project, day) sets are united here (one statement uniting a set-returning
    unnest across all shards is not one Citus plans well)."""
    params = {"project_id": project_id}
    changed = await connection.execute(
        text(
            "SELECT project_id, day FROM query_rollup_days WHERE built_changes IS DISTINCT FROM changes"
            " AND (CAST(:project_id AS bigint) IS NULL OR project_id = :project_id)"
        ),
        params,
    )
    days = {(row.project_id, row.day) for row in changed}
    pending = await connection.execute(
        text(
            "SELECT DISTINCT q.project_id, k.day FROM query_rollup_pending q CROSS JOIN unnest(q.days) AS k(day)"
            " WHERE CAST(:project_id AS bigint) IS NULL OR q.project_id = :project_id"
        ),
        params,
    )
    days.update((row.project_id, row.day) for row in pending)
    return len(days)


# --- Merging what arrived --------------------------------------------------------------------
#
# A refresh of one project is one transaction (refresh_project):
# 1. One statement takes (deletes) the project's pending rows, the keys of the non-bot events
#    committed since the last refresh, and reads every day's marker: the same snapshot, so
#    the markers' `changes` are those of exactly the batches taken. A batch that commits later
#    is taken next time.
# 2. The taken events are read once from events into query_rollup_events_staged (migration
#    0820); every statement below reads them there, or their counts per (day, session, visitor,
#    domain, hour) in query_rollup_events_counted (migration 1100, _COUNT_EVENTS), or per (day,
#    session, visitor) and path or name in query_rollup_events_items (1220, _COUNT_ITEMS). The touched
#    sessions are staged next (query_rollup_sessions_staged, step 3a) and their days read from
#    there. Sessions whose first event or entry pageview moved (an earlier event arrived late),
#    or whose start day is unbuilt, make their days unbuildable: their visit attributes, or the
#    day of their session row, changed under rows already written, or their session row is not
#    there to replace, and a sketch cannot take a visitor out. Those days are rebuilt (step 5),
#    except a never-built latest day all of whose events were taken: it is emptied and merged
#    (_days_to_merge_from_empty). More than MAX_MERGED_EVENTS waiting, and more than
#    BULK_SHARE_OF_DAYS of what their days hold (a bulk load, `_is_bulk`), make every changed
#    day unbuildable.
# 3. Every other day gets the new events' rows added (counts summed, visitors unioned) and each
#    touched session's old row (query_rollup_sessions_folded) replaced by its new one
#    (subtracted, added); the sessions' pages, domains and event names are the union of
#    those folded and the new events'.
# 4. Exit pages (migration 0820): a new pageview moves a session's earlier events to its new
#    exit page. Each touched session's session days (query_rollup_session_days: per day,
#    session and visitor, the pageviews and events folded, under the exit page and visit they
#    were folded with) are subtracted, grown by the new events and moved to the session's new
#    exit page (one write: _SESSION_DAYS_MERGE; the others by _SESSION_DAYS_MOVE) and added
#    back; its session row replaced as in step 3. A sketch cannot take a
#    visitor out, so the sketches of the (day, exit page) pairs the touched sessions left are
#    recomputed from those pages' session days (_EXIT_VISITORS): the one part that reads more
#    than what changed, the visitors of the pages left, not the whole day joined to its
#    sessions.
# 5. Unbuilt days (newest first, at most max_rebuilds) are rebuilt from their events, leaving
#    out events still pending (the next refresh merges them), with their sessions' folded rows
#    and their session days. A day of more than MAX_REBUILD_EVENTS events (or one already in
#    pieces) gets its next piece instead: at most PIECE_EVENTS of its events merged in time
#    order (build_day_piece); built once its last piece is.
# 6. The markers get the `changes` read in step 1 (or none, for unbuildable days left for a
#    later round), last and in day order: a delete bumps its days' markers (since 0800 an
#    insert only creates a missing one, and does not wait for this update).

_VISIT_COLUMNS = ", ".join(VISIT_DIMENSIONS)


def _visits_of(alias: str) -> str:
    return ", ".join(f"{alias}.{name}" for name in VISIT_DIMENSIONS)


# An event's key is its uuid and its time as Postgres sends them in binary (16 bytes, then the
# microseconds since 2000-01-01 as a big-endian int8): two byte copies per row read, matched
# against the taken keys hashed once. The taken keys are built by the same expression, from
# the pending rows' arrays (refresh_project). It was text (the uuid's text form, '@', the
# microseconds since 1970 through extract(epoch), a numeric), which cost more per row. The CASE
# keeps the planner from estimating `= ANY(...)` one array element at a time (~55 ms of planning
# for 93k keys); it takes a default selectivity instead, and the array is still hashed. Together:
# staging the events -18 to -33 % of CPU per event (tools.bench.stage_events; docs/benchmarks.md,
# "The events' key").
_EVENT_KEY = "(uuid_send({uuid}) || timestamptz_send({occurred_at}))"
_EVENT_KEY_FILTER = (
    f"CASE WHEN {_EVENT_KEY.format(uuid='e.event_uuid', occurred_at='e.occurred_at')}"
    " = ANY(CAST(:event_keys AS bytea[])) THEN true END AND NOT e.is_bot"
)


# Every statement of a merge is a plain INSERT ... SELECT (or DELETE) with no CTE, reading each
# table filtered by project_id = :project_id and selecting the target's project_id from a
# source's project_id column: the shape Citus pushes down to the project's co-located shards as
# one task. A CTE, or a constant project_id, makes it run the SELECT first and pull its rows
# through the coordinator (tests/common/test_citus_routing.py reads the plans).
#
# The new events, each found by its key: the times are an index condition (and prune the
# partitions); the key (_EVENT_KEY_FILTER) filters exactly the pairs taken. A join to unnest() of
# the keys let the planner hash the whole day's events against them (a cost in proportion to the
# day).
_NEW_EVENTS_WHERE = (
    f"e.project_id = :project_id AND e.occurred_at = ANY(CAST(:occurred_at AS timestamptz[])) AND {_EVENT_KEY_FILTER}"
)
# Read once per merge into query_rollup_events_staged (migration 0820), which every statement
# after reads: each statement probing the events index by key cost ~60 us per event merged.
_STAGE_EVENTS = (
    "INSERT INTO query_rollup_events_staged (project_id, occurred_at, day, name, distinct_id, session_id, path, domain)"
    " SELECT e.project_id, e.occurred_at, (e.occurred_at AT TIME ZONE :timezone)::date, e.name, e.distinct_id,"
    f" e.session_id, e.path, e.domain FROM events e WHERE {_NEW_EVENTS_WHERE}"
)
# Under live ingest the keys taken are dense in time (what arrived since the last round): the
# times given as a few ranges instead of one array element per event. With the array (70k
# elements under the 5000-visitor load) planning alone took ~0.6 s, pruning partitions element by
# element, and the day's partition was scanned whole with each row looked up in the hashed array:
# a cost in proportion to the day (docs/benchmarks.md, branch refcpu2). A range is cut where two
# consecutive taken times are more than STAGE_RANGE_GAP apart, so an event arriving late does not
# stretch one range over the events merged before it; with more than MAX_STAGE_RANGES ranges the
# array is used. Events in a range not taken (committed after the take, bots) fail the key filter.
STAGE_RANGE_GAP = timedelta(seconds=60)
# work_mem of the cube merges (see refresh_project).
MERGE_WORK_MEM = "128MB"
MAX_STAGE_RANGES = 16


def _stage_ranges(occurred_at: list[datetime]) -> list[tuple[datetime, datetime]] | None:
    """The taken times as ranges (see STAGE_RANGE_GAP), or None if there are too many."""
    ranges: list[tuple[datetime, datetime]] = []
    for at in sorted(occurred_at):
        if ranges and at - ranges[-1][1] <= STAGE_RANGE_GAP:
            ranges[-1] = (ranges[-1][0], at)
        else:
            if len(ranges) == MAX_STAGE_RANGES:
                return None
            ranges.append((at, at))
    return ranges


def _stage_events_sql(ranges: int) -> str:
    """_STAGE_EVENTS with the times as `ranges` ranges (:range_start_<i>, :range_end_<i>)."""
    times = " OR ".join(
        f"(e.occurred_at >= :range_start_{index} AND e.occurred_at <= :range_end_{index})" for index in range(ranges)
    )
    return (
        "INSERT INTO query_rollup_events_staged (project_id, occurred_at, day, name, distinct_id, session_id, path,"
        " domain) SELECT e.project_id, e.occurred_at, (e.occurred_at AT TIME ZONE :timezone)::date, e.name,"
        f" e.distinct_id, e.session_id, e.path, e.domain FROM events e WHERE e.project_id = :project_id AND ({times})"
        f" AND {_EVENT_KEY_FILTER}"
    )


_STAGED_EVENTS_WHERE = "e.project_id = :project_id"


# A folded set grown by the batch's elements: sorted and distinct (default collation), as every
# writer of the folded rows leaves it. A folded set that already holds every new element (the
# common case under live ingest: a session's pages, domains and event names repeat) is kept as
# it is, not unnested and sorted again per session: the same array.
def _union(column: str, new: str) -> str:
    return (
        f"CASE WHEN f.{column} @> n.{new} THEN f.{column} ELSE ARRAY(SELECT DISTINCT x"
        f" FROM unnest(coalesce(f.{column}, CAST('{{}}' AS text[])) || n.{new}) AS x ORDER BY 1) END"
    )


_FOLDED_COLUMNS = (
    "session_id, distinct_id, day, started_at, first_uuid, entry_uuid, ended_at, pageviews, events, entry_page,"
    " exit_page, "
    f"{_VISIT_COLUMNS}, pages, domains, event_names"
)
_FOLDED_UPDATE = ", ".join(f"{column.strip()} = excluded.{column.strip()}" for column in _FOLDED_COLUMNS.split(",")[1:])

_SKIPPED = "<> ALL(CAST(:skip AS date[]))"


# Each touched session's row by its key (LATERAL ... LIMIT 1, as the ingest triggers do), the
# project named by the staged row's column, not the constant: on statistics gathered before a
# new project's sessions existed, `project_id = <constant>` is estimated at a row or two, and
# the planner looked sessions up by the (project_id, distinct_id) index with the session as a
# filter, a scan of the project's sessions per session: quadratic in the batch (a 35k-event
# first merge of a new project cost 50 s of CPU under the load; the unexplained 43 s merge of
# closing note 4). By the column the estimate is the average project's, and the key's index wins.
# On Citus the statement is routed to the project's shard only with each table filtered on the
# constant, so there each lookup names the constant too (beside the column). A plain join, as
# before, let the planner put the sessions outside: on a new project's statistics (a row or two)
# it read the project's sessions and, per session, grouped the whole batch's staged events
# again; a 6,400-event load's first merge ran past the suite's command timeout. LATERAL keeps
# the batch's sessions outside, each looked up once. (On such an estimate the constant still lets
# the planner serve a lookup from the project's other index, a scan of the project's rows per
# session, as the join could: seen once in CI's plans, not fixed here.)
def _touched_sessions(citus: bool) -> str:
    """The staged sessions `n` (project_id, session_id) with their row `q` and folded row `f`."""
    routed = " AND {table}.project_id = :project_id" if citus else ""
    return (
        " CROSS JOIN LATERAL (SELECT * FROM query_sessions q WHERE q.project_id = n.project_id"
        f"{routed.format(table='q')} AND q.session_id = n.session_id LIMIT 1) q"
        " LEFT JOIN LATERAL (SELECT * FROM query_rollup_sessions_folded f WHERE f.project_id = n.project_id"
        f"{routed.format(table='f')} AND f.session_id = n.session_id LIMIT 1) f ON true"
    )


# Step 3a: the touched sessions as they are now (query_sessions, with the union of the folded
# and the new pages, domains, event names), read once into query_rollup_sessions_staged: the
# cubes and the folded rows are written from it by separate statements (migration 0760).
#
# Each touched session's new pages and names come from the batch's counts per session day and
# path or name (query_rollup_events_items), its domains from those per session day, domain and
# hour (query_rollup_events_counted), gathered per session by hashing (_stage_sessions): an
# element may come more than once (a session over two days or visitors) and in any order, as
# the union below makes each set distinct and sorted again unless the folded set already holds
# it. Until 1220 the staged events were grouped here, sorted by session for array_agg(DISTINCT):
# under the default collation (C.UTF-8) with no abbreviated keys, most of the statement's CPU,
# then under "C" (docs/benchmarks.md, branch refcpu5 and "A round grouped once").
#
# Sorting under "C" (byte order, abbreviated keys) groups and orders text as the default
# collation's equality does (C.UTF-8 is deterministic: equal means equal bytes).
_C = 'COLLATE "C"'


def _stage_sessions_sql(citus: bool) -> str:
    return (
        f"INSERT INTO query_rollup_sessions_staged (project_id, {_FOLDED_COLUMNS})"
        " SELECT q.project_id, q.session_id, q.distinct_id, (q.started_at AT TIME ZONE :timezone)::date, q.started_at,"
        " q.first_uuid,"
        f" q.entry_uuid, q.ended_at, q.pageviews, q.events, q.entry_page, q.exit_page, {_visits_of('q')},"
        f" {_union('pages', 'pages')}, {_union('domains', 'domains')}, {_union('event_names', 'names')}"
        " FROM (SELECT i.project_id, i.session_id, array_agg(i.path) FILTER (WHERE i.path IS NOT NULL) AS pages,"
        " array_agg(i.domain) FILTER (WHERE i.domain IS NOT NULL) AS domains,"
        " array_agg(i.name) FILTER (WHERE i.name IS NOT NULL) AS names"
        " FROM (SELECT i.project_id, i.session_id, i.path, i.name, NULL::text AS domain"
        " FROM query_rollup_events_items i WHERE i.project_id = :project_id"
        " UNION ALL SELECT k.project_id, k.session_id, NULL, NULL, k.domain FROM query_rollup_events_counted k"
        " WHERE k.project_id = :project_id) i GROUP BY i.project_id, i.session_id) n"
        f"{_touched_sessions(citus)}"
        f" WHERE q.project_id = :project_id AND (q.started_at AT TIME ZONE :timezone)::date {_SKIPPED}"
    )


async def _stage_sessions(connection: AsyncConnection, citus: bool, params: dict[str, object]) -> None:
    """The touched sessions staged (_stage_sessions_sql), their counted rows grouped by hashing: on
    the counted tables' statistics (a row or two) the planner sorted ~60,000 of them by session
    under the default collation instead, most of the statement's CPU."""
    await connection.execute(text("SELECT set_config('enable_sort', 'off', true)"))
    await connection.execute(text(_stage_sessions_sql(citus)), params)
    await connection.execute(text("SELECT set_config('enable_sort', 'on', true)"))


# The staged sessions' days (start, end, folded) and whether the session moved (a new first or
# entry event: its folded rows cannot be corrected by adding), the folded row found as in
# _touched_sessions; with the session's visitor now and as folded (the retention cohorts').
def _staged_session_days_sql(citus: bool) -> str:
    routed = " AND f.project_id = :project_id" if citus else ""
    folded = (
        " LEFT JOIN LATERAL (SELECT * FROM query_rollup_sessions_folded f WHERE f.project_id = st.project_id"
        f"{routed} AND f.session_id = st.session_id LIMIT 1) f ON true"
    )
    return (
        "SELECT st.session_id, st.day AS start_day, (st.ended_at AT TIME ZONE :timezone)::date AS end_day,"
        " f.day AS folded_day, st.distinct_id, f.distinct_id AS folded_visitor,"
        " (f.session_id IS NOT NULL AND (f.first_uuid <> st.first_uuid"
        " OR f.started_at <> st.started_at OR f.entry_uuid IS DISTINCT FROM st.entry_uuid)) AS moved"
        f" FROM query_rollup_sessions_staged st{folded} WHERE st.project_id = :project_id"
    )


_STAGED_SESSION_DAYS_SQL = {citus: _staged_session_days_sql(citus) for citus in (False, True)}


@dataclass(frozen=True)
class _Fixed:
    """How a merged cube's fixed column is read: from a new event (`e`, a staged event) or, with
    `of_session`, from the event's session (`q`, staged), and from a session row (`s`); `values`
    is the session's set it has a row per element of."""

    event: str
    session: str
    values: str | None = None
    of_session: bool = False


_FIXED: dict[str, _Fixed] = {
    "page": _Fixed("e.path", "v.value", "pages"),
    "entry_page": _Fixed("q.entry_page", "s.entry_page", of_session=True),
    "hour": _Fixed(
        "extract(hour FROM e.occurred_at AT TIME ZONE :timezone)::smallint",
        "extract(hour FROM s.started_at AT TIME ZONE :timezone)::smallint",
    ),
    "domain": _Fixed("e.domain", "v.value", "domains"),
    "event_name": _Fixed("e.name", "v.value", "event_names"),
}


# The staged events counted once per merge (migration 1100) per (day, session, visitor, domain,
# hour) into query_rollup_events_counted: the cube merges whose event columns are among those
# (visits, entry pages, hours, domains) count their events from these rows, and the touched
# sessions' domains are read from them. Under the 5000-visitor load a round's 140,024 events are
# 5,000 such rows (docs/benchmarks.md, branch refcpu4): each of those four cube merges counted a
# pass over every staged event. The cubes by page or by event name read the counts per path or
# name (_COUNT_ITEMS, below); those by event name and page count the staged events: their grain
# (87,740 rows per 140,024 events) costs more to write once than to count again. (The hour by
# date_part, a float8: extract() is a numeric, computed per event.)
_COUNTED: dict[str, str] = {"domain": "domain", "hour": "hour"}
_COUNT_EVENTS = (
    "INSERT INTO query_rollup_events_counted (project_id, day, session_id, distinct_id, domain, hour, pageviews,"
    " events) SELECT e.project_id, e.day, e.session_id, e.distinct_id, e.domain, e.hour,"
    " count(*) FILTER (WHERE e.name = 'pageview'), count(*) FROM (SELECT e.project_id, e.day, e.session_id,"
    " e.distinct_id, e.domain, e.name, date_part('hour', e.occurred_at AT TIME ZONE :timezone)::smallint AS hour"
    " FROM query_rollup_events_staged e"
    f" WHERE {_STAGED_EVENTS_WHERE}) e GROUP BY e.project_id, e.day, e.session_id, e.distinct_id, e.domain, e.hour"
)


# And per (day, session, visitor, path) and per (day, session, visitor, name), in one pass (two
# grouping sets; the column not grouped is NULL) into query_rollup_events_items (migration 1220):
# the session days' merge, the pages and event-name cube merges and the staging of the touched
# sessions read these rows (~50,000 per 140,000 events under the 5000-visitor load) instead of
# grouping every staged event again, each of them.
_COUNT_ITEMS = (
    "INSERT INTO query_rollup_events_items (project_id, day, session_id, distinct_id, path, name, pageviews, events)"
    " SELECT e.project_id, e.day, e.session_id, e.distinct_id, e.path, e.name,"
    " count(*) FILTER (WHERE e.name = 'pageview'), count(*) FROM query_rollup_events_staged e"
    f" WHERE {_STAGED_EVENTS_WHERE}"
    " GROUP BY e.project_id, e.day, e.session_id, e.distinct_id, GROUPING SETS ((e.path), (e.name))"
)
# The cubes whose only event column is a path or a name count their events from those rows: the
# column read, and the test that keeps the rows of that grain.
_ITEMS: dict[str, tuple[str, str]] = {
    "page": ("path", "i.path IS NOT NULL"),
    "event_name": ("name", "i.name IS NOT NULL"),
}
_ITEMS_WHERE = f"i.project_id = :project_id AND i.day {_SKIPPED}"


async def _count_staged(connection: AsyncConnection, params: dict[str, object]) -> None:
    """The staged events counted (_COUNT_EVENTS, _COUNT_ITEMS), every aggregate hashed: on the
    staged table's statistics (a row or two) the planner may sort instead."""
    await connection.execute(text("SELECT set_config('enable_sort', 'off', true)"))
    await connection.execute(text(_COUNT_EVENTS), params)
    await connection.execute(text(_COUNT_ITEMS), params)
    await connection.execute(text("SELECT set_config('enable_sort', 'on', true)"))


def _counted(own: Iterable[str]) -> bool:
    """Whether a cube merge's event columns `own` are all in query_rollup_events_counted."""
    return all(name in _COUNTED for name in own)


def _aggregate_sql(cube: Cube, rows: str) -> str:
    """Cube rows (project_id, day, grain, fixed, visit columns, metrics) from `rows`: project_id,
    day, fixed (if any), the visit columns, kind ('e' event row, 's' session row), distinct_id,
    pv, ev, sign, m_duration, m_pageviews, m_events. Session rows' figures count with their sign.

    In two passes: the rows are first aggregated per combination of every visit column the
    grains hold (a sketch of each combination's visitors, the sums), then the grains are the
    grouping sets over those partial rows (sketches unioned, sums summed). One grouping-set
    pass over the rows themselves fed each row to every grain (37 for the pair cubes): under
    the 5000-visitor load most of a merge's CPU (docs/benchmarks.md). Every metric is a sum or
    a sketch union, so both passes give the same rows.
    """
    grains = cube.grains
    sets = ", ".join(
        "(" + ", ".join(f"p.{name}" for name in VISIT_DIMENSIONS if name in grain) + ")" for grain in grains
    )
    grouped = frozenset().union(*grains)
    visit_columns = ", ".join(f"p.{name}" if name in grouped else f"NULL::text AS {name}" for name in VISIT_DIMENSIONS)
    if len(grains) == 1:
        grain = str(grain_id(grains[0]))
    else:
        grain = "GROUPING(" + ", ".join(f"p.{name}" for name in VISIT_DIMENSIONS) + ")"
    partial_keys = ", ".join(
        ["u.project_id", "u.day", *(f"u.{column}" for column in cube.fixed)]
        + [f"u.{name}" for name in VISIT_DIMENSIONS if name in grouped]
    )
    partial = (
        f"SELECT {partial_keys}, hll_add_agg(hll_hash_text(u.distinct_id), {HLL_LOG2M}) FILTER (WHERE u.kind = 'e')"
        " AS visitors, sum(u.sign) FILTER (WHERE u.kind = 's') AS sessions,"
        " sum(u.sign) FILTER (WHERE u.kind = 's' AND u.m_pageviews = 1 AND u.m_events = 1) AS bounces,"
        " sum(u.sign * u.m_duration) AS duration_s, sum(u.pv) AS pageviews, sum(u.ev) AS events,"
        " sum(u.sign * u.m_pageviews) AS session_pageviews"
        f" FROM ({rows}) u GROUP BY {partial_keys}"
    )
    fixed = "".join(f"p.{column}, " for column in cube.fixed)
    return (
        f"SELECT p.project_id, p.day, {grain} AS grain, {fixed}{visit_columns},"
        f" coalesce(hll_union_agg(p.visitors), hll_empty({HLL_LOG2M})) AS visitors,"
        " coalesce(sum(p.sessions), 0) AS sessions, coalesce(sum(p.bounces), 0) AS bounces,"
        " coalesce(sum(p.duration_s), 0) AS duration_s, coalesce(sum(p.pageviews), 0) AS pageviews,"
        " coalesce(sum(p.events), 0) AS events, coalesce(sum(p.session_pageviews), 0) AS session_pageviews"
        f" FROM ({partial}) p GROUP BY p.project_id, p.day, {fixed}GROUPING SETS ({sets})"
    )


def _session_rows(session_fixed: str, values: str, table: str, sign: int) -> str:
    """The touched sessions' rows for _aggregate_sql from the staged (new) or folded (old) table."""
    return (
        f"SELECT s.project_id, s.day, {session_fixed}{_visits_of('s')}, 's' AS kind, NULL::text AS distinct_id,"
        f" 0 AS pv, 0 AS ev, {sign} AS sign, extract(epoch FROM s.ended_at - s.started_at)::float8 AS m_duration,"
        f" s.pageviews AS m_pageviews, s.events AS m_events FROM {table} s{values}"
        " WHERE s.project_id = :project_id AND s.session_id = ANY(CAST(:sessions AS text[]))"
        f" AND s.day {_SKIPPED}"
    )


def _merge_sql(cube: Cube) -> str:
    """Adds the new events' rows and the touched sessions' new rows (staged), subtracts their old
    (folded) rows."""
    # Event rows by every fixed column; a cube with session rows has at most one (a cube without
    # them is merged from the new events alone, as they hold no session's figures).
    #
    # The new events are first counted per (day, session, visitor, fixed columns of the event),
    # then each count row gets its visit (and entry page) from its session as staged for this
    # merge: every event on a merged day belongs to a staged session (a session whose start day
    # is skipped makes each of its days skipped), and the staged sessions are hashed once. The
    # visit columns and the entry page are the session's, so this is one row per (day, fixed
    # columns, session, visitor, visit) as grouping after the join gave; joined first, every
    # event was hashed with the eight visit columns of its session as keys, in each of the eight
    # cube merges (docs/benchmarks.md, branch refcpu3).
    #
    # A cube whose event columns are domain or hour at most sums those counts from
    # query_rollup_events_counted (_COUNT_EVENTS, once per merge) instead.
    own = [name for name in cube.fixed if not _FIXED[name].of_session]
    event_fixed = "".join(
        f"{_FIXED[name].event} AS {name}, " if _FIXED[name].of_session else f"ne.{name}, " for name in cube.fixed
    )
    if _counted(own):
        own_fixed = "".join(f"k.{_COUNTED[name]} AS {name}, " for name in own)
        own_keys = "".join(f", k.{_COUNTED[name]}" for name in own)
        counts = (
            f"SELECT k.project_id, k.day, k.session_id, k.distinct_id, {own_fixed}sum(k.pageviews) AS pv,"
            f" sum(k.events) AS ev FROM query_rollup_events_counted k WHERE k.project_id = :project_id"
            f" AND k.day {_SKIPPED} GROUP BY k.project_id, k.day, k.session_id, k.distinct_id{own_keys}"
        )
    elif len(own) == 1 and own[0] in _ITEMS:
        column, grain = _ITEMS[own[0]]
        counts = (
            f"SELECT i.project_id, i.day, i.session_id, i.distinct_id, i.{column} AS {own[0]}, i.pageviews AS pv,"
            f" i.events AS ev FROM query_rollup_events_items i WHERE {_ITEMS_WHERE} AND {grain}"
        )
    else:
        own_fixed = "".join(f"{_FIXED[name].event} AS {name}, " for name in own)
        own_keys = "".join(f", {_FIXED[name].event}" for name in own)
        counts = (
            f"SELECT e.project_id, e.day, e.session_id, e.distinct_id, {own_fixed}"
            "count(*) FILTER (WHERE e.name = 'pageview') AS pv, count(*) AS ev"
            f" FROM query_rollup_events_staged e WHERE {_STAGED_EVENTS_WHERE} AND e.day {_SKIPPED}"
            f" GROUP BY e.project_id, e.day, e.session_id, e.distinct_id{own_keys}"
        )
    event_rows = (
        f"SELECT ne.project_id, ne.day, {event_fixed}{_visits_of('q')}, 'e' AS kind, ne.distinct_id,"
        " ne.pv, ne.ev, 1 AS sign, NULL::float8 AS m_duration, NULL::bigint AS m_pageviews,"
        f" NULL::bigint AS m_events FROM ({counts}) ne JOIN query_rollup_sessions_staged q"
        " ON q.project_id = ne.project_id AND q.session_id = ne.session_id WHERE q.project_id = :project_id"
    )
    if not cube.session_rows and not frozenset().union(*cube.grains):
        # No visit column kept, no session rows (the event-page cubes): the events are aggregated
        # as they are, each with its session's entry page if the cube keeps it (the staged
        # sessions hashed once, one column read), not counted per session first. Every event on
        # a merged day belongs to a staged session (above). The count per (session, name, path),
        # 87,740 rows per 140,024 events under the 5000-visitor load, and its join were most of
        # these cubes' cost (docs/benchmarks.md, branch refcpu4).
        direct_fixed = "".join(f"{_FIXED[name].event} AS {name}, " for name in cube.fixed)
        of_session = len(own) < len(cube.fixed)
        join = (
            " JOIN query_rollup_sessions_staged q ON q.project_id = e.project_id AND q.session_id = e.session_id"
            " AND q.project_id = :project_id"
            if of_session
            else ""
        )
        event_rows = (
            f"SELECT e.project_id, e.day, {direct_fixed}"
            f"{', '.join(f'NULL::text AS {name}' for name in VISIT_DIMENSIONS)}, 'e' AS kind, e.distinct_id,"
            " CASE WHEN e.name = 'pageview' THEN 1 ELSE 0 END AS pv, 1 AS ev, 1 AS sign, NULL::float8 AS m_duration,"
            f" NULL::bigint AS m_pageviews, NULL::bigint AS m_events FROM query_rollup_events_staged e{join}"
            f" WHERE {_STAGED_EVENTS_WHERE} AND e.day {_SKIPPED}"
        )
    fixed_name = "".join(f"{name}, " for name in cube.fixed)
    key = f"project_id, day, grain, {fixed_name}{_VISIT_COLUMNS}"
    if not cube.session_rows:
        return (
            f"INSERT INTO {cube.table} AS c ({key}, {CUBE_METRIC_COLUMNS}) {_aggregate_sql(cube, event_rows)}"
            f" ON CONFLICT ({key}) DO UPDATE SET visitors = hll_union(c.visitors, excluded.visitors),"
            " pageviews = c.pageviews + excluded.pageviews, events = c.events + excluded.events"
        )
    fixed = _FIXED[cube.fixed[0]] if cube.fixed else None
    session_fixed = f"{fixed.session} AS {cube.fixed[0]}, " if fixed else ""
    values = f" CROSS JOIN unnest(s.{fixed.values}) AS v(value)" if fixed and fixed.values else ""

    rows = (
        f"{event_rows} UNION ALL {_session_rows(session_fixed, values, 'query_rollup_sessions_staged', 1)}"
        f" UNION ALL {_session_rows(session_fixed, values, 'query_rollup_sessions_folded', -1)}"
    )
    return _merge_into(cube, rows)


def _merge_into(cube: Cube, rows: str) -> str:
    """The cube rows aggregated from `rows` (see _aggregate_sql) added to the cube's: counts
    summed, sketches unioned."""
    fixed_name = "".join(f"{name}, " for name in cube.fixed)
    key = f"project_id, day, grain, {fixed_name}{_VISIT_COLUMNS}"
    return (
        f"INSERT INTO {cube.table} AS c ({key}, {CUBE_METRIC_COLUMNS}) {_aggregate_sql(cube, rows)}"
        f" ON CONFLICT ({key}) DO UPDATE SET visitors = hll_union(c.visitors, excluded.visitors),"
        " sessions = c.sessions + excluded.sessions, bounces = c.bounces + excluded.bounces,"
        " duration_s = c.duration_s + excluded.duration_s, pageviews = c.pageviews + excluded.pageviews,"
        " events = c.events + excluded.events, session_pageviews = c.session_pageviews + excluded.session_pageviews"
    )


_MERGED_CUBES = tuple(cube for cube in CUBES if cube is not EXIT_PAGES_CUBE)

# A session day's pages and event names (migration 0850; 1210): each path once, each
# non-pageview event name once in byte order, and event_counts the events of each name, element
# by element. A row is as long as its session day's distinct pages and names, however long the
# session goes on.
#
# From rows `g` of (session day, name) and (session day, path) counts (`by_name` tells which),
# fed in order of name, then path: the pages, the names and their counts. array_agg keeps the
# order it is fed in; an aggregate's own ORDER BY would rule out hashing the session days
# (Postgres 15 sorts all of them for it: a sort of the batch and a merge join on it, seconds
# per round under the seed load).
_SESSION_DAY_ITEMS = (
    "array_agg(g.path) FILTER (WHERE NOT g.by_name) AS pages,"
    " coalesce(array_agg(g.name) FILTER (WHERE g.by_name AND g.name <> 'pageview'),"
    " CAST('{}' AS text[])) AS event_names,"
    " coalesce(array_agg(g.n) FILTER (WHERE g.by_name AND g.name <> 'pageview'),"
    " CAST('{}' AS bigint[])) AS event_counts"
)
_ITEMS_ORDER = f"ORDER BY name {_C}, path {_C}"


def _session_days_insert(source: str, project: str = "b.project_id", items: bool = True) -> str:
    """The session days of the events `source` (aliased `b`: day, session, visitor, the session's
    exit page and raw visit columns, name, path; those with `e_in_range`) inserted, under the
    project `project` (a column of `b`, or the :project_id parameter). Without `items`, the pages,
    names and counts are left out (what tools/bench/cube_cost.py compares a rebuild with)."""
    by_column = project == "b.project_id"
    visits = [DIMENSIONS[name].raw for name in VISIT_DIMENSIONS]
    keys = ["day", "session_id", "distinct_id", "exit_page", *visits]
    grouped = (["project_id"] if by_column else []) + keys
    columns = f"project_id, day, session_id, distinct_id, pageviews, events, exit_page, {_VISIT_COLUMNS}"

    def of(alias: str, names: list[str]) -> str:
        return ", ".join(f"{alias}.{name}" for name in names)

    if not items:
        return (
            f"INSERT INTO query_rollup_session_days ({columns}) SELECT {project}, {of('b', keys[:3])},"
            f" count(*) FILTER (WHERE b.name = 'pageview'), count(*), {of('b', keys[3:])}"
            f" FROM {source} WHERE b.e_in_range GROUP BY {of('b', grouped)}"
        )
    # The events counted per (session day, name) and per (session day, path) in one pass.
    counts = (
        f"SELECT {of('b', grouped)}, b.name, b.path, GROUPING(b.name) = 0 AS by_name, count(*) AS n"
        f" FROM {source} WHERE b.e_in_range GROUP BY {of('b', grouped)}, GROUPING SETS ((b.name), (b.path))"
        f" {_ITEMS_ORDER}"
    )
    return (
        f"INSERT INTO query_rollup_session_days ({columns}, pages, event_names, event_counts)"
        f" SELECT {'g.project_id' if by_column else project}, {of('g', keys[:3])},"
        " coalesce(sum(g.n) FILTER (WHERE g.by_name AND g.name = 'pageview'), 0)::bigint,"
        f" coalesce(sum(g.n) FILTER (WHERE g.by_name), 0)::bigint, {of('g', keys[3:])}, {_SESSION_DAY_ITEMS}"
        f" FROM ({counts}) g GROUP BY {of('g', grouped)}"
    )


# The new events' session days, every aggregate hashed, from the batch's counts per session day
# and path and per session day and name (query_rollup_events_items, _COUNT_ITEMS): the paths,
# each once, and their counts summed per session day; the non-pageview names' counts gathered
# per session day in order of name (array_agg keeps the order it is fed; its own ORDER BY would
# rule out hashing, see _SESSION_DAY_ITEMS). With array_agg(DISTINCT path) the batch was sorted
# on (day, session, visitor) and each session day's paths sorted again: ~3 us per event merged
# (docs/benchmarks.md, branch refcpu3). A new session day's pages are in no particular order
# (the readers take them as a set).
#
# A session day already folded keeps its pages and names as they are when the batch brings none
# new (the common case under live ingest: a session's pages and event names repeat) and adds
# each of the batch's names' events to its count: element by element where the batch has the
# same names (the seed load's every batch; ~10 us a row cheaper than the lookup), else found by
# array_position in the batch's few names; a new page or name makes them again from both, each
# once and sorted. Before 1210 the batch's paths and names were appended, so each merge rewrote
# a row that grew by an element per custom event for as long as the session went on.
#
# Each session day also gets its session's exit page and visit (staged) here, the move's work
# (_SESSION_DAYS_MOVE) for the session days the batch has events on: under live ingest nearly
# every touched session has a new exit page each round, and the move rewrote each row this
# merge had just written (a second tuple with its ten index entries: the exit page, the key and
# 0920's eight visit indexes). The move is left the session days without new events. A session
# day of a session with no row (none staged) gets no exit page or visit, as a new one did.
_SESSION_DAY_PLACE = f"exit_page, {_VISIT_COLUMNS}"
_BOTH_NAMES = "unnest(d.event_names || excluded.event_names, d.event_counts || excluded.event_counts) AS u(name, n)"
_SESSION_DAYS_MERGE = (
    "INSERT INTO query_rollup_session_days AS d (project_id, day, session_id, distinct_id, pageviews, events,"
    f" pages, event_names, event_counts, {_SESSION_DAY_PLACE})"
    " SELECT c.project_id, c.day, c.session_id, c.distinct_id, c.pageviews, c.events, c.pages,"
    " coalesce(n.names, CAST('{}' AS text[])), coalesce(n.counts, CAST('{}' AS bigint[])),"
    f" st.exit_page, {_visits_of('st')}"
    " FROM (SELECT i.project_id, i.day, i.session_id, i.distinct_id, sum(i.pageviews) AS pageviews,"
    " sum(i.events) AS events, array_agg(i.path) AS pages FROM query_rollup_events_items i"
    f" WHERE {_ITEMS_WHERE} AND i.path IS NOT NULL GROUP BY i.project_id, i.day, i.session_id, i.distinct_id) c"
    " LEFT JOIN (SELECT k.project_id, k.day, k.session_id, k.distinct_id, array_agg(k.name) AS names,"
    " array_agg(k.events) AS counts FROM (SELECT i.project_id, i.day, i.session_id, i.distinct_id, i.name, i.events"
    f" FROM query_rollup_events_items i WHERE {_ITEMS_WHERE} AND i.name IS NOT NULL AND i.name <> 'pageview'"
    f" ORDER BY i.name {_C}) k GROUP BY k.project_id, k.day, k.session_id, k.distinct_id) n"
    " ON n.project_id = c.project_id AND n.day = c.day AND n.session_id = c.session_id"
    " AND n.distinct_id = c.distinct_id"
    " LEFT JOIN query_rollup_sessions_staged st ON st.project_id = c.project_id AND st.session_id = c.session_id"
    " AND st.project_id = :project_id"
    " ON CONFLICT (project_id, day, session_id, distinct_id) DO UPDATE"
    " SET pageviews = d.pageviews + excluded.pageviews, events = d.events + excluded.events,"
    " pages = CASE WHEN d.pages @> excluded.pages THEN d.pages"
    " ELSE ARRAY(SELECT x FROM unnest(coalesce(d.pages, CAST('{}' AS text[])) || excluded.pages) AS x"
    f" GROUP BY x ORDER BY x {_C}) END,"
    " event_names = CASE WHEN d.event_names @> excluded.event_names THEN d.event_names"
    f" ELSE ARRAY(SELECT u.name FROM {_BOTH_NAMES} GROUP BY u.name ORDER BY u.name {_C}) END,"
    " event_counts = CASE WHEN excluded.event_names = CAST('{}' AS text[]) THEN d.event_counts"
    " WHEN d.event_names = excluded.event_names THEN ARRAY(SELECT u.was + u.added"
    " FROM unnest(d.event_counts, excluded.event_counts) WITH ORDINALITY AS u(was, added, i) ORDER BY u.i)"
    " WHEN d.event_names @> excluded.event_names THEN ARRAY(SELECT u.was"
    " + coalesce(excluded.event_counts[array_position(excluded.event_names, u.name)], 0)"
    " FROM unnest(d.event_names, d.event_counts) WITH ORDINALITY AS u(name, was, i) ORDER BY u.i)"
    f" ELSE ARRAY(SELECT CAST(sum(u.n) AS bigint) FROM {_BOTH_NAMES} GROUP BY u.name ORDER BY u.name {_C}) END, "
    + ", ".join(f"{name} = excluded.{name}" for name in _SESSION_DAY_PLACE.split(", "))
)

_FOLDED_MERGE = (
    f"INSERT INTO query_rollup_sessions_folded (project_id, {_FOLDED_COLUMNS})"
    f" SELECT project_id, {_FOLDED_COLUMNS} FROM query_rollup_sessions_staged WHERE project_id = :project_id"
    f" ON CONFLICT (project_id, session_id) DO UPDATE SET {_FOLDED_UPDATE}"
)

# Exit pages (migration 0820). A session's rows in the exit-page cube are its session days (per
# day and visitor: pageviews, events, the visitor in the sketch) and its session row, all under
# its exit page, which a new pageview moves. Each session day holds the exit page and visit its
# rows were folded under; a merge takes the touched sessions' old rows out (counts subtracted),
# moves their session days to the sessions' new exit page and visit (staged), and adds their
# rows back. A sketch cannot take a visitor out: the sketches of the exit pages that touched
# sessions left are recomputed (_EXIT_VISITORS) from those pages' session days alone (the
# (project_id, day, exit_page) index), no longer the whole day joined to its sessions.
_TOUCHED_SESSION_DAYS = (
    "query_rollup_session_days sd WHERE sd.project_id = :project_id AND sd.day = ANY(CAST(:days AS date[]))"
    f" AND sd.day {_SKIPPED} AND sd.session_id = ANY(CAST(:sessions AS text[]))"
)


def _session_day_rows(kind: str, sign: int) -> str:
    """The touched sessions' session days as exit-page rows for _aggregate_sql: kind 'e' adds the
    visitor to the sketch, any other kind only counts."""
    return (
        f"SELECT sd.project_id, sd.day, sd.exit_page, {_visits_of('sd')}, '{kind}' AS kind, sd.distinct_id,"
        f" {sign} * sd.pageviews AS pv, {sign} * sd.events AS ev, 0 AS sign, NULL::float8 AS m_duration,"
        f" NULL::bigint AS m_pageviews, NULL::bigint AS m_events FROM {_TOUCHED_SESSION_DAYS}"
    )


# Before the session days and folded rows change: the old session days' counts out, and the
# session rows replaced (folded out, staged in).
_EXIT_OLD = _merge_into(
    EXIT_PAGES_CUBE,
    f"{_session_day_rows('o', -1)}"
    f" UNION ALL {_session_rows('s.exit_page AS exit_page, ', '', 'query_rollup_sessions_staged', 1)}"
    f" UNION ALL {_session_rows('s.exit_page AS exit_page, ', '', 'query_rollup_sessions_folded', -1)}",
)
# The (day, exit page) pairs whose sketches lose a visitor: session days whose exit page or visit
# the merge changes.
# One merged day per statement (:day): with the days as `day = ANY(:days)` the planner kept the
# day out of the session days' index condition and each staged session's probe read the
# project's session days of every day, (project_id, session_id) matched inside the index: under
# the 5000-visitor load ~110 pages per session, the day's size times the batch's sessions, the
# largest statement cost of a merge after the cubes (docs/benchmarks.md, branch refcpu2).
#
# Joined with no nested loop (refresh_project prices them out for _EXIT_PAGES_LEFT and the move):
# the staged sessions are hashed and the session days read once. On a new project's statistics
# (a row or two for its day) every (project_id, day, ...) index of the session days costs the
# same as the key's, 0920's eight visit indexes included; a nested loop probing the day through
# one of those per staged session, the session a filter, would read the whole day once per
# session: the day's size times the batch's sessions. That is the likely shape of the 3.9-5.4 s
# moves refcpu3 saw under the 5000-visitor load (not reproduced; docs/benchmarks.md, refcpu5).
_SESSION_DAYS_STAGED = (
    "st.project_id = sd.project_id AND st.project_id = :project_id"
    " AND st.session_id = sd.session_id AND sd.project_id = :project_id AND sd.day = CAST(:day AS date)"
    # (Implied by the join; said so the session days are found by their key even when the
    # planner, on stale statistics, would start from the staged sessions' side.)
    " AND sd.session_id = ANY(CAST(:sessions AS text[]))"
    f" AND sd.day {_SKIPPED} AND ROW(sd.exit_page, {_visits_of('sd')}) IS DISTINCT FROM"
    f" ROW(st.exit_page, {_visits_of('st')})"
)
_EXIT_PAGES_LEFT = (
    "SELECT DISTINCT sd.day, sd.exit_page FROM query_rollup_session_days sd, query_rollup_sessions_staged st"
    f" WHERE {_SESSION_DAYS_STAGED}"
)
# After the new events' session days are added: every session day of a touched session under its
# session's exit page and visit now (those with new events were put there by the merge; the rest:
# a session's other days and visitors).
_SESSION_DAYS_MOVE = (
    "UPDATE query_rollup_session_days sd SET exit_page = st.exit_page, "
    + ", ".join(f"{name} = st.{name}" for name in VISIT_DIMENSIONS)
    + f" FROM query_rollup_sessions_staged st WHERE {_SESSION_DAYS_STAGED}"
)
_EXIT_NEW = _merge_into(EXIT_PAGES_CUBE, _session_day_rows("e", 1))


def _exit_visitors_sql() -> str:
    """The sketches of one day's exit pages (:pages, and NULL if :null_page), every grain,
    recomputed from their session days; run after each was emptied (_EXIT_EMPTY). Every group
    it computes is in the cube (each session day's rows were added), so the insert only ever
    updates, matched by the group index (an UPDATE ... FROM matched the groups with IS NOT
    DISTINCT FROM, which no hash or index serves: a nested loop over the day's groups)."""
    grains = EXIT_PAGES_CUBE.grains
    sets = ", ".join(
        "(" + ", ".join(f"u.{name}" for name in VISIT_DIMENSIONS if name in grain) + ")" for grain in grains
    )
    grain = "GROUPING(" + ", ".join(f"u.{name}" for name in VISIT_DIMENSIONS) + ")"
    key = f"project_id, day, grain, exit_page, {_VISIT_COLUMNS}"
    return (
        f"INSERT INTO {EXIT_PAGES_CUBE.table} AS c ({key}, {CUBE_METRIC_COLUMNS}) SELECT u.project_id, u.day,"
        f" {grain}, u.exit_page, {_visits_of('u')}, hll_add_agg(u.h, {HLL_LOG2M}), 0, 0, 0, 0, 0, 0"
        f" FROM (SELECT sd.project_id, sd.day, sd.exit_page, {_visits_of('sd')}, hll_hash_text(sd.distinct_id) AS h"
        " FROM query_rollup_session_days sd WHERE sd.project_id = :project_id AND sd.day = :day"
        " AND (sd.exit_page = ANY(CAST(:pages AS text[])) OR (:null_page AND sd.exit_page IS NULL))) u"
        f" GROUP BY u.project_id, u.day, u.exit_page, GROUPING SETS ({sets})"
        f" ON CONFLICT ({key}) DO UPDATE SET visitors = excluded.visitors"
    )


_EXIT_EMPTY = (
    f"UPDATE {EXIT_PAGES_CUBE.table} SET visitors = hll_empty({HLL_LOG2M}) WHERE project_id = :project_id"
    " AND day = :day AND (exit_page = ANY(CAST(:pages AS text[])) OR (:null_page AND exit_page IS NULL))"
)
_EXIT_VISITORS = _exit_visitors_sql()


# The exit-page items (migration 0900): per day and exit page, each page (kind 'p') and event
# name (kind 'e'; the pageviews as 'pageview') of the session days under that exit page, with
# a visitor sketch and the events. Written from the session days alone: a rebuilt day's from
# its session days (_EXIT_ITEMS_DAY); a merge takes the touched session days' events out under
# their old exit page (_EXIT_ITEMS_OLD, before they change) and adds them, visitors too, under
# their new one (_EXIT_ITEMS_NEW, after they moved); the (day, exit page) pairs a session left
# (a sketch cannot take a visitor out) are deleted and rewritten from their session days
# (_EXIT_ITEMS_LEFT_*), as the exit-page cube's sketches are (_EXIT_VISITORS). That rewrite
# reads every session day of the pairs left: on the day live ingest merges into, nearly the
# whole day at every merge (+1.0 s of Postgres CPU per 500-event merge into a 320k-event day,
# docs/benchmarks.md). So merges into the project's latest day leave its items alone and mark
# them stale (query_rollup_days.exit_items_stale; queries read that day from its session days);
# once a later day has events, a refresh remakes them from the day's session days (_EXIT_ITEMS_DAY,
# one day per refresh), as a rebuild does.
EXIT_ITEMS_TABLE = "query_rollup_exit_items"


def exit_items_sql(where: str, sign: int = 1, conflict: bool = True) -> str:
    """The items of the session days `sd` matching `where` (every `sd` filtered by project_id):
    with `sign` -1 their events only, subtracted; merged into the rows there (`conflict`)."""
    visitors = f"hll_add_agg(hll_hash_text(u.distinct_id), {HLL_LOG2M})" if sign > 0 else f"hll_empty({HLL_LOG2M})"
    on_conflict = (
        " ON CONFLICT (project_id, day, exit_page, kind, value) DO UPDATE"
        " SET visitors = hll_union(c.visitors, excluded.visitors), events = c.events + excluded.events"
        if conflict
        else ""
    )
    return (
        f"INSERT INTO {EXIT_ITEMS_TABLE} AS c (project_id, day, exit_page, kind, value, visitors, events)"
        f" SELECT u.project_id, u.day, u.exit_page, u.kind, u.value, {visitors}, {sign} * sum(u.n) FROM ("
        "SELECT sd.project_id, sd.day, sd.exit_page, 'p' AS kind, x.value, sd.distinct_id, 0 AS n"
        f" FROM query_rollup_session_days sd CROSS JOIN unnest(sd.pages) AS x(value) WHERE {where}"
        " UNION ALL SELECT sd.project_id, sd.day, sd.exit_page, 'e', x.value, sd.distinct_id, x.n"
        f" FROM query_rollup_session_days sd CROSS JOIN unnest(sd.event_names, sd.event_counts) AS x(value, n)"
        f" WHERE {where}"
        " UNION ALL SELECT sd.project_id, sd.day, sd.exit_page, 'e', 'pageview', sd.distinct_id, sd.pageviews"
        f" FROM query_rollup_session_days sd WHERE {where} AND sd.pageviews > 0"
        f") u GROUP BY u.project_id, u.day, u.exit_page, u.kind, u.value{on_conflict}"
    )


# The merged days but the latest (:item_days).
_TOUCHED_WHERE = _TOUCHED_SESSION_DAYS.removeprefix("query_rollup_session_days sd WHERE ").replace(
    ":days", ":item_days"
)
_EXIT_ITEMS_OLD = exit_items_sql(_TOUCHED_WHERE, sign=-1)
_EXIT_ITEMS_NEW = exit_items_sql(_TOUCHED_WHERE)
_LEFT_PAIRS = "(exit_page = ANY(CAST(:pages AS text[])) OR (:null_page AND exit_page IS NULL))"
_EXIT_ITEMS_LEFT_DELETE = (
    f"DELETE FROM {EXIT_ITEMS_TABLE} WHERE project_id = :project_id AND day = :day AND {_LEFT_PAIRS}"
)
_EXIT_ITEMS_LEFT_WRITE = exit_items_sql(
    f"sd.project_id = :project_id AND sd.day = :day AND {_LEFT_PAIRS.replace('exit_page', 'sd.exit_page')}",
    conflict=False,
)
_EXIT_ITEMS_DAY = exit_items_sql("sd.project_id = :project_id AND sd.day = :day", conflict=False)


async def _remake_stale_exit_items(
    connection: AsyncConnection, project_id: int, latest: date | None, busy: set[date]
) -> set[date]:
    """The newest built day before `latest` whose exit-page items are stale, not in `busy`, if its
    lock is free: its items remade from its session days. Returns it (its marker is the caller's)."""
    if latest is None:
        return set()
    stale = await connection.execute(
        text(
            "SELECT day FROM query_rollup_days WHERE project_id = :project_id AND exit_items_stale"
            " AND built_changes IS NOT NULL AND day < :latest AND day <> ALL(CAST(:busy AS date[]))"
            " ORDER BY day DESC LIMIT 1"
        ),
        {"project_id": project_id, "latest": latest, "busy": sorted(busy)},
    )
    day = stale.scalar_one_or_none()
    if day is None:
        return set()
    params: dict[str, object] = {"project_id": project_id, "day": day}
    locked = await connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:namespace, hashtext(:key))"),
        {"namespace": ROLLUP_LOCK_NAMESPACE, "key": day_lock_key(project_id, day)},
    )
    if not locked.scalar_one():
        return set()
    await connection.execute(
        text(f"DELETE FROM {EXIT_ITEMS_TABLE} WHERE project_id = :project_id AND day = :day"), params
    )
    await connection.execute(text(_EXIT_ITEMS_DAY), params)
    return {day}


async def exit_items_stale_days(
    connection: AsyncConnection, project_id: int, date_from: date, date_to: date
) -> set[date]:
    """The days of the range whose exit-page items lag their session days (migration 0900)."""
    result = await connection.execute(
        text(
            "SELECT day FROM query_rollup_days WHERE project_id = :project_id AND day BETWEEN :date_from AND :date_to"
            " AND exit_items_stale"
        ),
        {"project_id": project_id, "date_from": date_from, "date_to": date_to},
    )
    return set(result.scalars())


def _days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


async def _try_lock_days(connection: AsyncConnection, project_id: int, days: Iterable[date]) -> None:
    for day in sorted(set(days)):
        locked = await connection.execute(
            text("SELECT pg_try_advisory_xact_lock(:namespace, hashtext(:key))"),
            {"namespace": ROLLUP_LOCK_NAMESPACE, "key": day_lock_key(project_id, day)},
        )
        if not locked.scalar_one():
            raise DaysBusy(f"project {project_id}: day {day} is being built or purged")


async def _is_bulk(connection: AsyncConnection, project_id: int, waiting: int) -> bool:
    """More than MAX_MERGED_EVENTS waiting and more than BULK_SHARE_OF_DAYS of the events the
    rollups of their days hold (the visits cube's all-visits rows, one per day)."""
    if waiting <= MAX_MERGED_EVENTS:
        return False
    held = await connection.execute(
        text(
            "SELECT coalesce(sum(v.events), 0) FROM query_rollup_visits v WHERE v.project_id = :project_id"
            " AND v.grain = :grain AND v.day IN (SELECT DISTINCT k.day FROM query_rollup_pending p"
            " CROSS JOIN unnest(p.days) AS k(day) WHERE p.project_id = :project_id)"
        ),
        {"project_id": project_id, "grain": grain_id(frozenset())},
    )
    return waiting > BULK_SHARE_OF_DAYS * int(held.scalar_one())


# A never-built day whose every committed event was just taken (staged) holds nothing a merge
# into empty rollups would miss, so it is merged from empty instead of rebuilt: a day born under
# live ingest (today) was rebuilt at its first refresh, and the backlog piled up behind that
# rebuild's pause rebuilt it again (docs/benchmarks.md). Only the project's latest day with a
# marker qualifies: a later day's events may belong to sessions begun on it (their pages,
# domains and event names are folded on their start day), and a rebuild reads those too. The
# count leaves out events still pending (committed after the take: the next refresh merges
# them), as a rebuild does; a mismatch (an event taken by an earlier refresh that left the day
# unbuilt, a delete) rebuilds the day as before.
_DAY_EVENTS = (
    "SELECT count(*) FROM events e WHERE e.project_id = :project_id AND e.occurred_at >= :start"
    " AND e.occurred_at < :end AND NOT e.is_bot"
)
_DAY_EVENTS_PENDING = (
    "SELECT count(*) FROM query_rollup_pending p CROSS JOIN unnest(p.occurred_at) AS k(occurred_at)"
    " WHERE p.project_id = :project_id AND p.days @> ARRAY[CAST(:day AS date)]"
    " AND k.occurred_at >= :start AND k.occurred_at < :end"
)


async def _days_to_merge_from_empty(
    connection: AsyncConnection, project_id: int, timezone: str, unbuilt: set[date], changes: dict[date, int]
) -> set[date]:
    """The never-built latest day, if every event on it was taken: its rows (none, unless a
    delete unmade it) are cleared, under its lock, for the merge to fill. Call after staging."""
    from services.query.planner import local_midnight

    if not changes:
        return set()
    latest = max(changes)
    if latest not in unbuilt:
        return set()
    params: dict[str, object] = {"project_id": project_id, "day": latest}
    staged = await connection.execute(
        text(f"SELECT count(*) FROM query_rollup_events_staged e WHERE {_STAGED_EVENTS_WHERE} AND e.day = :day"),
        params,
    )
    taken = int(staged.scalar_one())
    if taken == 0:
        return set()
    params.update(start=local_midnight(latest, timezone), end=local_midnight(latest + timedelta(days=1), timezone))
    # Two counts, not an anti-join of the day's events to the pending keys: on a new project's
    # statistics (a row or two estimated) that was planned as a loop over the pending keys per
    # event, and ran into the statement timeout under the load. A taken or pending event deleted
    # meanwhile bumps the day's `changes`, so the day is rebuilt next round whatever this says.
    #
    # Both counts in one statement, so one snapshot: as two statements, an insert committed
    # between them was in the pending count but not in the day's, and under the 5000-visitor
    # load (hundreds of commits a second) the load's new day was rebuilt instead of merged
    # (docs/benchmarks.md, branch refcpu2). Each subquery is planned as its statement was.
    counts = await connection.execute(text(f"SELECT ({_DAY_EVENTS}) - ({_DAY_EVENTS_PENDING})"), params)
    if int(counts.scalar_one()) != taken:
        return set()
    await _try_lock_days(connection, project_id, [latest])
    tables = (*(cube.table for cube in CUBES), "query_rollup_session_days", "query_rollup_sessions_folded")
    for table in (*tables, EXIT_ITEMS_TABLE):
        await connection.execute(text(f"DELETE FROM {table} WHERE project_id = :project_id AND day = :day"), params)
    return {latest}


async def refresh_project(
    connection: AsyncConnection, project: ProjectToRefresh, max_rebuilds: int
) -> RefreshOutcome | None:
    """Merges the project's pending events into its rollups and rebuilds its unbuilt days (at
    most max_rebuilds; a day over MAX_REBUILD_EVENTS gets its next piece instead,
    build_day_piece); None if another refresher holds the project. Raises DaysBusy (roll
    back) if a day it must write is held. The steps are described above."""
    # Here, not at the top: the planner reads this module's day states.
    from services.query.planner import local_midnight

    project_id, timezone = project.project_id, project.timezone
    locked = await connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:namespace, hashtext(:key))"),
        {"namespace": ROLLUP_LOCK_NAMESPACE, "key": f"{project_id}:refresh"},
    )
    if not locked.scalar_one():
        return None
    waiting = await connection.execute(
        text(
            "SELECT coalesce(sum(cardinality(event_uuid)), 0) FROM query_rollup_pending WHERE project_id = :project_id"
        ),
        {"project_id": project_id},
    )
    # A bulk load (an import, a backlog after downtime) is cheaper rebuilt than merged: its keys
    # are dropped and every day it changed is rebuilt.
    bulk = await _is_bulk(connection, project_id, int(waiting.scalar_one()))
    # (In bulk, the days the load touched instead, with no `changes`: the markers always have one.)
    # Otherwise one row per pending row (an ingest batch), its times and its events' keys as
    # arrays: a row per event cost the refresher's process ~9 us each (the row, its fields, the
    # key built in Python), ~0.8 s of a query worker's CPU per round of the 5000-visitor load.
    keys = (
        "DISTINCT k.day, NULL::bigint AS changes, NULL::bigint AS built_changes, NULL::timestamptz[] AS occurred_at,"
        " NULL::bytea[] AS event_keys, NULL::text AS timezone FROM taken CROSS JOIN unnest(taken.days) AS k(day)"
        if bulk
        else (
            "NULL::date AS day, NULL::bigint AS changes, NULL::bigint AS built_changes, taken.occurred_at,"
            f" ARRAY(SELECT {_EVENT_KEY.format(uuid='k.event_uuid', occurred_at='k.occurred_at')}"
            " FROM unnest(taken.occurred_at, taken.event_uuid) AS k(occurred_at, event_uuid)) AS event_keys,"
            " NULL::text AS timezone FROM taken"
        )
    )
    # The keys, the markers and the timezone (a timezone change remakes the markers) in one snapshot.
    taken = await connection.execute(
        text(
            "WITH taken AS (DELETE FROM query_rollup_pending WHERE project_id = :project_id"
            " RETURNING occurred_at, event_uuid, days)"
            f" SELECT {keys}"
            " UNION ALL SELECT day, changes, built_changes, NULL, NULL, NULL FROM query_rollup_days"
            " WHERE project_id = :project_id"
            " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, timezone FROM projects WHERE project_id = :project_id"
        ),
        {"project_id": project_id},
    )
    occurred_at: list[datetime] = []
    event_keys: list[bytes] = []
    changes: dict[date, int] = {}
    unbuilt: set[date] = set()
    stale: set[date] = set()
    loaded: set[date] = set()
    for row in taken:
        if row.timezone is not None:
            timezone = row.timezone
            continue
        if row.day is not None and row.changes is None:
            loaded.add(row.day)
            continue
        if row.day is None:
            occurred_at.extend(row.occurred_at)
            event_keys.extend(row.event_keys)
            continue
        changes[row.day] = row.changes
        if row.built_changes is None:
            unbuilt.add(row.day)
        elif row.built_changes != row.changes:
            stale.add(row.day)
    # Days whose rows can no longer be corrected by adding: rebuilt below, or marked never built
    # at the end. Their markers are written last, like every marker: a delete locks its days'
    # markers, and would wait for this transaction until it commits.
    unbuildable: set[date] = set()
    if bulk:
        # Every day the load has events on (its pending rows' days), and the start days of the
        # sessions that span into one of those days from an earlier day (their session rows
        # live there: a superset of the sessions the load extended).
        if loaded:
            extended = await connection.execute(
                text(
                    "SELECT DISTINCT (q.started_at AT TIME ZONE :timezone)::date FROM query_sessions q"
                    f" WHERE q.project_id = :project_id AND {ended_at_or_after(':start', alias='q')}"
                    " AND q.started_at < :end"
                    " AND EXISTS (SELECT FROM unnest(CAST(:days AS date[])) AS l(day)"
                    " WHERE l.day > (q.started_at AT TIME ZONE :timezone)::date"
                    " AND l.day <= (q.ended_at AT TIME ZONE :timezone)::date)"
                ),
                {
                    "project_id": project_id,
                    "timezone": timezone,
                    "start": local_midnight(min(loaded), timezone),
                    "end": local_midnight(max(loaded) + timedelta(days=1), timezone),
                    "days": sorted(loaded),
                },
            )
            loaded.update(extended.scalars())
        changed = stale | (loaded & changes.keys())
        unbuildable |= changed
        unbuilt |= changed
        stale = set()
    params: dict[str, object] = {
        "project_id": project_id,
        "timezone": timezone,
        "occurred_at": occurred_at,
        "event_keys": event_keys,
    }
    merged: set[date] = set()
    # The project's latest day with events: merges leave its exit-page items stale.
    latest = max(changes) if changes else None
    # Never-built days merged from empty rollups (their markers are written as rebuilt ones).
    from_empty: set[date] = set()
    # Days being built in pieces whose rows no longer hold (a session on them moved).
    restart_pieces: set[date] = set()
    # The merge's change to the retention rows; None: not kept (no merge, or a week was held).
    retention: RetentionChange | None = None
    if occurred_at:
        citus = await is_citus(connection)
        ranges = _stage_ranges(occurred_at)
        if ranges is None:
            await connection.execute(text(_STAGE_EVENTS), params)
        else:
            range_params = dict(params)
            for index, (first, last) in enumerate(ranges):
                range_params[f"range_start_{index}"] = first
                range_params[f"range_end_{index}"] = last
            await connection.execute(text(_stage_events_sql(len(ranges))), range_params)
        await _count_staged(connection, params)
        from_empty = await _days_to_merge_from_empty(connection, project_id, timezone, unbuilt - unbuildable, changes)
        unbuilt -= from_empty
        # Every statement from here to the end of the merge reads and writes by key. Right after a
        # burst the tables' statistics are stale: the planner could pick a scan per key (seen as a
        # timeout in the suite, 6,000 events). Scans are priced out for these statements only
        # (where no index serves, Postgres still scans).
        await connection.execute(text("SELECT set_config('enable_seqscan', 'off', true)"))
        # The touched sessions' new state read once (step 3a), before the days to merge are known:
        # the sessions of days left unbuilt are deleted from it below. The days are read from it,
        # not from the staged events again (a scan and a hash of the whole batch).
        await _stage_sessions(connection, citus, {**params, "skip": []})
        sessions = await connection.execute(text(_STAGED_SESSION_DAYS_SQL[citus]), params)
        moved_days: set[date] = set()
        new_event_sessions: list[str] = []
        # Sessions new to the folded rows, or whose visitor changed: the retention cohorts' changes.
        new_visitors: list[SessionVisitor] = []
        for session in sessions:
            new_event_sessions.append(session.session_id)
            if not session.moved and session.folded_visitor != session.distinct_id:
                new_visitors.append(
                    SessionVisitor(session.distinct_id, session.start_day, session.folded_visitor, session.folded_day)
                )
            first = min(session.start_day, session.folded_day or session.start_day)
            span = _days_between(first, session.end_day)
            if session.moved:
                # A day being built in pieces holds rows of this session's old visit: it starts over.
                restart_pieces.update(span)
            # A session whose start day is not built is not merged (its session row lives
            # there; its staged row is deleted below): its other days cannot move its session
            # days to its new exit page.
            if session.moved or session.start_day in unbuilt:
                moved_days.update(span)
            else:
                merged.update(span)
        moved_days &= changes.keys()
        unbuildable |= moved_days
        unbuilt |= moved_days
        merged -= unbuilt
        await _try_lock_days(connection, project_id, merged | unbuilt)
        params["skip"] = sorted(unbuilt)
        params["sessions"] = sorted(new_event_sessions)
        if unbuilt and merged:
            # A session whose start day is not built is not merged (its session row lives there).
            await connection.execute(
                text(
                    "DELETE FROM query_rollup_sessions_staged WHERE project_id = :project_id"
                    " AND day = ANY(CAST(:skip AS date[]))"
                ),
                params,
            )
        if merged:
            # Every new event and touched session lies on a merged or an unbuilt day: with none
            # merged (a load into days never built) each statement below would write nothing.
            # The staged sessions' new state: every cube merge reads it and the folded rows as
            # they were (old), then the folded rows are replaced, last.
            params["days"] = sorted(merged)
            # The exit-page items of the merged days but the latest (its items are left stale).
            params["item_days"] = sorted(day for day in merged if day != latest)
            merged_visitors = [visitor for visitor in new_visitors if visitor.day not in unbuilt]
            retention = await take_retention_out(connection, project_id, merged_visitors, latest)
            await _merge_staged(connection, params)
            if retention is not None:
                await put_retention_back(connection, project_id, retention)
        else:
            await connection.execute(
                text("DELETE FROM query_rollup_sessions_staged WHERE project_id = :project_id"), params
            )
        await connection.execute(text("SELECT set_config('enable_seqscan', 'on', true)"))
        await _clear_staged_events(connection, project_id)
    else:
        await _try_lock_days(connection, project_id, unbuilt)
    rebuilt: list[date] = []
    pieces: dict[date, PieceProgress] = {}
    to_rebuild = sorted(unbuilt, reverse=True)[:max_rebuilds]
    in_pieces = await piece_states(connection, project_id) if to_rebuild else {}
    if to_rebuild:
        await configure_transaction(connection)
    for day in to_rebuild:
        start, end = local_midnight(day, timezone), local_midnight(day + timedelta(days=1), timezone)
        if day in in_pieces or await too_large_to_rebuild(connection, project_id, start, end, MAX_REBUILD_EVENTS):
            # Too large for one rebuild within the statement timeout: its next piece (see
            # build_day_piece), the day built once its last one is.
            pieces[day] = await build_day_piece(
                connection,
                project_id=project_id,
                timezone=timezone,
                day=day,
                start=start,
                end=end,
                changes=changes[day],
                state=None if day in restart_pieces else in_pieces.get(day),
                piece_events=PIECE_EVENTS,
            )
            if pieces[day].done:
                rebuilt.append(day)
            await configure_transaction(connection)
            continue
        await rebuild_day(connection, project_id=project_id, timezone=timezone, day=day, start=start, end=end)
        rebuilt.append(day)
    built = {day: changes[day] for day in (merged | stale) - unbuilt if day in changes}
    # One earlier day whose exit-page items a merge left stale (when it was the latest) gets them
    # remade from its session days, now final for this refresh.
    items_remade = await _remake_stale_exit_items(connection, project_id, latest, unbuilt | unbuildable | set(rebuilt))
    # The retention weeks current before this refresh stay current after it when the merge kept
    # their rows and nothing else changed the folded sessions (see "Retention cohorts").
    current_weeks: dict[date, datetime] = {}
    if retention is not None and built and latest is not None and not (bulk or unbuildable or to_rebuild):
        current_weeks = await current_retention_weeks(connection, project_id, week_of(min(built)), week_of(latest))
    # One pass in day order, as the delete trigger takes the markers' locks: no deadlock with it.
    for day in sorted(built.keys() | set(rebuilt) | unbuildable | items_remade | pieces.keys()):
        piece = pieces.get(day)
        if piece is not None and not piece.done:
            # A day in pieces stays unbuilt; its progress (none: it starts over) is kept.
            await connection.execute(
                text(
                    "UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL,"
                    " piece_until = CAST(:until AS timestamptz), piece_until_uuid = CAST(:until_uuid AS uuid),"
                    " piece_changes = CASE WHEN CAST(:until AS timestamptz) IS NULL THEN NULL"
                    " ELSE CAST(:generation AS bigint) END,"
                    " piece_events = CASE WHEN CAST(:until AS timestamptz) IS NULL THEN NULL"
                    " ELSE CAST(:events AS bigint) END"
                    " WHERE project_id = :project_id AND day = :day"
                ),
                {
                    "project_id": project_id,
                    "day": day,
                    "until": piece.until,
                    "until_uuid": piece.until_uuid,
                    "generation": changes[day],
                    "events": piece.events,
                },
            )
        elif day in built or day in rebuilt:
            # A merged day purged meanwhile (never built) stays so; a rebuilt one is built, and so
            # is one merged from empty (its rows cleared and merged under its lock). A rebuilt
            # day's exit-page items are current; a merged latest day's are left stale.
            condition = "" if day in rebuilt or day in from_empty else " AND built_changes IS NOT NULL"
            # A day built in pieces has its items made from its session days later, as a merged
            # latest day's (they are marked stale); a built day is in pieces no longer.
            items = (
                ", exit_items_stale = true"
                if piece is not None
                else ", exit_items_stale = false"
                if day in rebuilt or day in items_remade
                else ", exit_items_stale = true"
                if day in merged and day == latest
                else ""
            )
            await connection.execute(
                text(
                    f"UPDATE query_rollup_days SET built_changes = :generation, built_at = now(){items},"
                    " piece_until = NULL, piece_until_uuid = NULL, piece_changes = NULL, piece_events = NULL"
                    f" WHERE project_id = :project_id AND day = :day{condition}"
                ),
                {"project_id": project_id, "day": day, "generation": changes[day]},
            )
        elif day in items_remade:
            await connection.execute(
                text(
                    "UPDATE query_rollup_days SET exit_items_stale = false"
                    " WHERE project_id = :project_id AND day = :day"
                ),
                {"project_id": project_id, "day": day},
            )
        else:
            # (A day in pieces with a session moved on it starts over.)
            restart = (
                ", piece_until = NULL, piece_until_uuid = NULL, piece_changes = NULL, piece_events = NULL"
                if day in restart_pieces
                else ""
            )
            await connection.execute(
                text(
                    f"UPDATE query_rollup_days SET built_changes = NULL, built_at = NULL{restart}"
                    " WHERE project_id = :project_id AND day = :day"
                ),
                {"project_id": project_id, "day": day},
            )
    if current_weeks and latest is not None:
        await advance_retention_weeks(connection, project_id, current_weeks, week_of(latest))
    # (A day whose last piece was built counts among the pieces, not the rebuilt days.)
    rebuilt_days = len(rebuilt) - sum(piece.done for piece in pieces.values())
    return RefreshOutcome(len(built), rebuilt_days, len(occurred_at), tuple(pieces.values()))


# A day's rebuild (rebuild_day) on Citus: the sessions overlapping the day, staged once; the
# day's events (and those after it of the sessions begun on it) less those still pending, each
# with its session (`base`), as in repository.session_ctes; every table written from them by a
# statement of its own, without CTEs (see the merge above). On plain Postgres the one
# statement below reads the events once for every table instead.
_STAGE_DAY_SESSIONS = (
    f"INSERT INTO query_rollup_sessions_staged (project_id, {_FOLDED_COLUMNS})"
    " SELECT project_id, session_id, distinct_id, (started_at AT TIME ZONE :timezone)::date, started_at, first_uuid,"
    f" entry_uuid, ended_at, pageviews, events, entry_page, exit_page, {_VISIT_COLUMNS},"
    " CAST('{}' AS text[]), CAST('{}' AS text[]), CAST('{}' AS text[])"
    f" FROM query_sessions WHERE project_id = :project_id AND {ended_at_or_after(':start')} AND started_at < :end"
)
_DAY_EVENTS_END = (
    "SELECT greatest(CAST(:end AS timestamptz), max(ended_at) FILTER (WHERE started_at >= :start"
    " AND started_at < :end)) FROM query_rollup_sessions_staged WHERE project_id = :project_id"
)
_DAY_SESS = (
    "(SELECT project_id, session_id, started_at AS s_started_at, ended_at AS s_ended_at, day AS s_day,"
    " distinct_id AS s_visitor, extract(epoch FROM ended_at - started_at)::float8 AS s_duration,"
    " pageviews AS s_pageviews, events AS s_events, entry_page, exit_page,"
    + ", ".join(f"{name} AS {DIMENSIONS[name].raw}" for name in VISIT_DIMENSIONS)
    + ", first_uuid AS s_first_uuid, entry_uuid AS s_entry_uuid, (started_at >= :start AND started_at < :end)"
    " AS s_in_range FROM query_rollup_sessions_staged WHERE project_id = :project_id)"
)
_DAY_SESSION_COLUMNS = (
    "session_id, s_started_at, s_ended_at, s_day, s_visitor, s_duration, s_pageviews, s_events, entry_page,"
    " exit_page, " + ", ".join(DIMENSIONS[name].raw for name in VISIT_DIMENSIONS) + ", s_first_uuid, s_entry_uuid"
)
# Pending events are left out by an anti-join on their keys, correlated on project_id (a
# subquery of its own would be a subplan on Citus).
_DAY_BASE = (
    "(SELECT e.project_id, e.occurred_at, e.name, e.distinct_id, e.path, e.domain,"
    " (e.occurred_at AT TIME ZONE :timezone)::date AS day, (e.occurred_at < :end) AS e_in_range, s.s_in_range, "
    + ", ".join(f"s.{column.strip()}" for column in _DAY_SESSION_COLUMNS.split(","))
    + f" FROM events e JOIN {_DAY_SESS} s ON s.project_id = e.project_id AND s.session_id = e.session_id"
    " WHERE e.project_id = :project_id AND e.occurred_at >= :start AND e.occurred_at <= :events_end AND NOT e.is_bot"
    " AND NOT EXISTS (SELECT FROM query_rollup_pending p"
    " CROSS JOIN unnest(p.occurred_at, p.event_uuid) AS k(occurred_at, event_uuid)"
    " WHERE p.project_id = e.project_id AND p.project_id = :project_id"
    " AND k.occurred_at = e.occurred_at AND k.event_uuid = e.event_uuid))"
)
_RAW_VISITS = ", ".join(f"b.{DIMENSIONS[name].raw}" for name in VISIT_DIMENSIONS)
_NAMED_VISITS = ", ".join(f"b.{DIMENSIONS[name].raw} AS {name}" for name in VISIT_DIMENSIONS)
_SESSION_ROW = (
    "'s' AS kind, NULL::text AS distinct_id, 0 AS pv, 0 AS ev, 1 AS sign, b.s_duration AS m_duration,"
    " b.s_pageviews AS m_pageviews, b.s_events AS m_events"
)


def _rebuild_rows(cube: Cube) -> str:
    """The day's rows for _aggregate_sql, as repository.cube_select_sql computes them: per
    session and visitor its events (by the fixed column), and a row per session that started
    on the day (per value among its events, for a per-event fixed column)."""
    event_fixed = "".join(f"{column.event} AS {column.name}, " for column in cube.fixed_columns)
    event_keys = "".join(f"{column.event}, " for column in cube.fixed_columns)
    event_rows = (
        f"SELECT b.project_id, b.day, {event_fixed}{_NAMED_VISITS}, 'e' AS kind, b.distinct_id,"
        " count(*) FILTER (WHERE b.name = 'pageview') AS pv, count(*) AS ev, 1 AS sign, NULL::float8 AS m_duration,"
        f" NULL::bigint AS m_pageviews, NULL::bigint AS m_events FROM {_DAY_BASE} b WHERE b.e_in_range"
        f" GROUP BY b.project_id, b.day, {event_keys}b.session_id, b.distinct_id,"
        f" {_RAW_VISITS}"
    )
    if not cube.session_rows:
        return event_rows
    fixed = cube.fixed_columns[0] if cube.fixed_columns else None
    if fixed is None:
        session_rows = (
            f"SELECT b.project_id, b.s_day, {_NAMED_VISITS}, {_SESSION_ROW} FROM {_DAY_SESS} b WHERE b.s_in_range"
        )
    elif fixed.per_event:
        # One row per (session, value among its events): a session counts once per page.
        session_rows = (
            f"SELECT b.project_id, b.s_day, b.{fixed.name}, {_NAMED_VISITS}, {_SESSION_ROW}"
            f" FROM (SELECT DISTINCT b.project_id, b.session_id, b.s_day, {fixed.session} AS {fixed.name},"
            f" {_RAW_VISITS}, b.s_duration, b.s_pageviews, b.s_events FROM {_DAY_BASE} b WHERE b.s_in_range) b"
        )
    else:
        session_rows = (
            f"SELECT b.project_id, b.s_day, {fixed.session} AS {fixed.name}, {_NAMED_VISITS}, {_SESSION_ROW}"
            f" FROM {_DAY_SESS} b WHERE b.s_in_range"
        )
    return f"{event_rows} UNION ALL {session_rows}"


def _rebuild_sql(cube: Cube) -> str:
    columns = ", ".join(("project_id", "day", "grain", *cube.columns))
    return f"INSERT INTO {cube.table} ({columns}, {CUBE_METRIC_COLUMNS}) {_aggregate_sql(cube, _rebuild_rows(cube))}"


_REBUILD_SESSION_DAYS = _session_days_insert(f"{_DAY_BASE} b")
# The sessions that started on the day with the pages, domains and event names among their
# events: grouped from one union, not joined.
_REBUILD_FOLDED = (
    f"INSERT INTO query_rollup_sessions_folded AS f (project_id, {_FOLDED_COLUMNS})"
    " SELECT u.project_id, u.session_id, max(u.s_visitor), :day, max(u.s_started_at), CAST(max(u.first_uuid) AS uuid),"
    " CAST(max(u.entry_uuid) AS uuid), max(u.s_ended_at), max(u.s_pageviews), max(u.s_events), max(u.entry_page),"
    " max(u.exit_page), "
    + ", ".join(f"max(u.{DIMENSIONS[name].raw})" for name in VISIT_DIMENSIONS)
    + ", coalesce(array_agg(DISTINCT u.path ORDER BY u.path) FILTER (WHERE u.path IS NOT NULL), CAST('{}' AS text[])),"
    " coalesce(array_agg(DISTINCT u.domain ORDER BY u.domain) FILTER (WHERE u.domain IS NOT NULL),"
    " CAST('{}' AS text[])),"
    " coalesce(array_agg(DISTINCT u.name ORDER BY u.name) FILTER (WHERE u.name IS NOT NULL), CAST('{}' AS text[]))"
    " FROM (SELECT b.project_id, b.session_id, b.s_visitor, b.s_started_at, CAST(b.s_first_uuid AS text) AS first_uuid,"
    " CAST(b.s_entry_uuid AS text) AS entry_uuid, b.s_ended_at, b.s_pageviews, b.s_events, b.entry_page,"
    f" b.exit_page, {_RAW_VISITS}, NULL AS path, NULL AS domain, NULL AS name FROM {_DAY_SESS} b WHERE b.s_in_range"
    " UNION ALL SELECT b.project_id, b.session_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
    + ", ".join(["NULL"] * len(VISIT_DIMENSIONS))
    + f", b.path, b.domain, b.name FROM {_DAY_BASE} b WHERE b.s_in_range) u GROUP BY u.project_id, u.session_id"
    f" ON CONFLICT (project_id, session_id) DO UPDATE SET {_FOLDED_UPDATE}"
)


def _rebuild_one_statement(session_day_items: bool = True) -> str:
    """rebuild_day's writes on plain Postgres: one statement of data-modifying CTEs over
    repository.session_ctes (the shape Citus cannot push down, see above). Without
    `session_day_items`, the session days' pages and event names (0850) are left out: what
    tools/bench/cube_cost.py compares a rebuild with."""
    inserts = []
    for cube in CUBES:
        columns = ", ".join(("day", "grain", *cube.columns))
        computed = cube_select_sql(cube, cube.grains)
        inserts.append(
            f"INSERT INTO {cube.table} (project_id, {columns}, {CUBE_METRIC_COLUMNS})"
            f" SELECT :project_id, {columns}, {CUBE_METRIC_COLUMNS} FROM ({computed}) computed"
        )
    raw_visits = ", ".join(DIMENSIONS[name].raw for name in VISIT_DIMENSIONS)
    inserts.append(_session_days_insert("base b", project=":project_id", items=session_day_items))
    # The sessions that started on the day with the pages, domains and event names among their
    # events: grouped from one union, not joined (a join of two CTEs has no estimates to go by).
    nulls = ", ".join(["NULL"] * len(VISIT_DIMENSIONS))
    folded = ", ".join(f"max({DIMENSIONS[name].raw})" for name in VISIT_DIMENSIONS)
    inserts.append(
        f"INSERT INTO query_rollup_sessions_folded AS f (project_id, {_FOLDED_COLUMNS})"
        " SELECT :project_id, session_id, max(s_visitor), :day, max(s_started_at), CAST(max(first_uuid) AS uuid),"
        " CAST(max(entry_uuid) AS uuid), max(s_ended_at), max(s_pageviews), max(s_events), max(entry_page),"
        f" max(exit_page), {folded},"
        " coalesce(array_agg(DISTINCT path ORDER BY path) FILTER (WHERE path IS NOT NULL), CAST('{}' AS text[])),"
        " coalesce(array_agg(DISTINCT domain ORDER BY domain) FILTER (WHERE domain IS NOT NULL),"
        " CAST('{}' AS text[])),"
        " coalesce(array_agg(DISTINCT name ORDER BY name) FILTER (WHERE name IS NOT NULL), CAST('{}' AS text[]))"
        " FROM (SELECT session_id, s_visitor, s_started_at, CAST(s_first_uuid AS text) AS first_uuid,"
        " CAST(s_entry_uuid AS text) AS entry_uuid, s_ended_at, s_pageviews, s_events, entry_page, exit_page,"
        f" {raw_visits}, NULL AS path, NULL AS domain, NULL AS name FROM sess WHERE s_in_range"
        " UNION ALL SELECT session_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
        f" {nulls}, path, domain, name FROM base WHERE s_in_range) u GROUP BY session_id"
        f" ON CONFLICT (project_id, session_id) DO UPDATE SET {_FOLDED_UPDATE}"
    )
    writes = ", ".join(f"c{index} AS ({insert})" for index, insert in enumerate(inserts[:-1]))
    return f"WITH {session_ctes(materialized=True, exclude_pending=True)}, {writes} {inserts[-1]}"


_REBUILD_ONE_STATEMENT = _rebuild_one_statement()


async def rebuild_day(
    connection: AsyncConnection,
    *,
    project_id: int,
    timezone: str,
    day: date,
    start: datetime,
    end: datetime,
) -> None:
    """Replace the day's cube rows, session days and the folded rows of the sessions that
    started on it, from its events less those still pending. Hold the day's lock."""
    params: dict[str, object] = {"project_id": project_id, "timezone": timezone, "day": day, "start": start, "end": end}
    for table in (*(cube.table for cube in CUBES), "query_rollup_session_days", EXIT_ITEMS_TABLE):
        await connection.execute(text(f"DELETE FROM {table} WHERE project_id = :project_id AND day = :day"), params)
    await connection.execute(
        text("DELETE FROM query_rollup_sessions_folded WHERE project_id = :project_id AND day = :day"), params
    )
    if not await is_citus(connection):
        # Plain Postgres: one statement for every table, so the day's events are read and
        # joined to their sessions once (a statement per table read them once per table:
        # 1.75x the CPU for a 325k-event day, docs/benchmarks.md).
        await connection.execute(text(_REBUILD_ONE_STATEMENT), params)
        await connection.execute(text(_EXIT_ITEMS_DAY), params)
        return
    # Citus: a statement per table, each pushed down to the project's shards. Pushed down, they
    # are planned by the workers with the workers' settings, not the transaction's
    # (configure_transaction): a worker whose statistics are stale (just after a bulk insert)
    # could join the day's events to the staged sessions with a nested loop, seen as a rebuild
    # of 6,000 events running past the 15 s command timeout in the Citus suite. With
    # propagate_set_commands 'local', Citus sends this transaction's SET LOCAL to the workers.
    await connection.execute(text("SET LOCAL citus.propagate_set_commands TO 'local'"))
    await connection.execute(text("SET LOCAL enable_nestloop TO off"))
    await connection.execute(text(_STAGE_DAY_SESSIONS), params)
    params["events_end"] = (await connection.execute(text(_DAY_EVENTS_END), params)).scalar_one()
    for cube in CUBES:
        await connection.execute(text(_rebuild_sql(cube)), params)
    await connection.execute(text(_REBUILD_SESSION_DAYS), params)
    await connection.execute(text(_EXIT_ITEMS_DAY), params)
    await connection.execute(text(_REBUILD_FOLDED), params)
    await connection.execute(text("DELETE FROM query_rollup_sessions_staged WHERE project_id = :project_id"), params)


# --- A day too large for one rebuild, built in pieces ---------------------------------------
#
# A day to rebuild with more than MAX_REBUILD_EVENTS events (an import, a preload, a rebuild
# after a purge) is built by successive merges of bounded time ranges of its events into its
# emptied rollups, in key order, one piece per refresh, each committed with its progress on
# the day's marker (migration 1140: piece_until and piece_until_uuid, piece_changes, piece_events). The merge is exact
# against a rebuild (tests/query/test_rollup_increments.py), and here every session is merged at
# its final state (query_sessions), so each piece adds the events of its range to the sessions'
# rows; the last piece also stages the events after the day of the sessions begun on it (the
# day's rebuild folds their pages, domains and event names into those sessions' rows) with the
# later days skipped, so it leaves those days' rows alone as a rebuild of this day does. Events
# of sessions begun on an earlier day replace those sessions' rows there (the day is locked
# too): with the day's pages already folded in, unchanged.
#
# The day starts over (its rows cleared at its next piece) when what was built no longer
# holds: its `changes` moved since the first piece (a delete, a purge), a session touched had
# its first event or entry pageview moved (its visit changed under rows already written; the
# refresh also restarts a day in pieces on which a merged session moved), or, at the last
# piece, the day's events (less those pending) are not the events its session days count (an
# event committed behind the pieces, e.g. a second load). Until done the day stays unbuilt:
# queries read it from raw events, and merges of live events skip it (the pieces read them).
_PIECE_STATE = (
    "SELECT day, piece_until, piece_until_uuid, piece_changes, piece_events FROM query_rollup_days"
    " WHERE project_id = :project_id AND piece_until IS NOT NULL"
)
# Pieces are cut in the events' key order (occurred_at, event_uuid), the primary key's after
# project_id, so that events at one instant (a load clamped to its end: 400,000 at one
# microsecond) still split; the time bounds alone prune the partitions. The event :offset
# places after (:from, :from_uuid), bots too (a bound, not a count).
_DAY_EVENT_AT = (
    "SELECT e.occurred_at, e.event_uuid FROM events e WHERE e.project_id = :project_id AND e.occurred_at >= :from"
    " AND e.occurred_at < :end AND (e.occurred_at, e.event_uuid) >= (:from, CAST(:from_uuid AS uuid))"
    " ORDER BY e.occurred_at, e.event_uuid OFFSET :offset LIMIT 1"
)
# Before any event at its time.
_FIRST_UUID = UUID(int=0)
# Pending events are left out as the rebuild leaves them out (_DAY_BASE): the refresh that
# takes them merges them once the day is built; until then they are read by a later piece.
_NOT_PENDING = (
    " AND NOT EXISTS (SELECT FROM query_rollup_pending p"
    " CROSS JOIN unnest(p.occurred_at, p.event_uuid) AS k(occurred_at, event_uuid)"
    " WHERE p.project_id = e.project_id AND p.project_id = :project_id"
    " AND k.occurred_at = e.occurred_at AND k.event_uuid = e.event_uuid)"
)
_STAGED_COLUMNS = "project_id, occurred_at, day, name, distinct_id, session_id, path, domain"
_STAGED_VALUES = (
    "e.project_id, e.occurred_at, (e.occurred_at AT TIME ZONE :timezone)::date, e.name, e.distinct_id,"
    " e.session_id, e.path, e.domain"
)
_STAGE_PIECE = (
    f"INSERT INTO query_rollup_events_staged ({_STAGED_COLUMNS}) SELECT {_STAGED_VALUES} FROM events e"
    " WHERE e.project_id = :project_id AND e.occurred_at >= :from AND e.occurred_at <= :to AND NOT e.is_bot"
    " AND (e.occurred_at, e.event_uuid) >= (:from, CAST(:from_uuid AS uuid))"
    " AND (e.occurred_at, e.event_uuid) < (:to, CAST(:to_uuid AS uuid))"
    f"{_NOT_PENDING}"
)
# The last piece: the events after the day of the sessions begun on it, up to the last end.
_PIECE_EVENTS_END = (
    "SELECT max(q.ended_at) FROM query_sessions q WHERE q.project_id = :project_id"
    " AND q.started_at >= :start AND q.started_at < :end"
)
_STAGE_PIECE_AFTER = (
    f"INSERT INTO query_rollup_events_staged ({_STAGED_COLUMNS}) SELECT {_STAGED_VALUES} FROM events e"
    " JOIN query_sessions q ON q.project_id = e.project_id AND q.session_id = e.session_id"
    " WHERE e.project_id = :project_id AND q.project_id = :project_id AND e.occurred_at >= :end"
    " AND e.occurred_at <= :events_end AND NOT e.is_bot AND q.started_at >= :start AND q.started_at < :end"
    f"{_NOT_PENDING}"
)
_PIECE_SESSIONS = (
    "SELECT q.session_id, (q.started_at AT TIME ZONE :timezone)::date AS start_day,"
    " (f.session_id IS NOT NULL AND (f.first_uuid <> q.first_uuid OR f.started_at <> q.started_at"
    " OR f.entry_uuid IS DISTINCT FROM q.entry_uuid)) AS moved"
    " FROM (SELECT DISTINCT e.project_id, e.session_id FROM query_rollup_events_staged e"
    f" WHERE {_STAGED_EVENTS_WHERE}) n"
    "{touched} WHERE q.project_id = :project_id"
)
_PIECE_STAGED_IN_DAY = (
    f"SELECT count(*) FROM query_rollup_events_staged e WHERE {_STAGED_EVENTS_WHERE} AND e.day = :day"
)
_PIECE_STAGED_DAYS = f"SELECT DISTINCT e.day FROM query_rollup_events_staged e WHERE {_STAGED_EVENTS_WHERE}"
# The day's events less those pending against the events its session days count: one snapshot.
_PIECE_MISSING = (
    "SELECT (SELECT count(*) FROM events e WHERE e.project_id = :project_id AND e.occurred_at >= :start"
    f" AND e.occurred_at < :end AND NOT e.is_bot{_NOT_PENDING})"
    " - (SELECT coalesce(sum(d.events), 0) FROM query_rollup_session_days d WHERE d.project_id = :project_id"
    " AND d.day = :day)"
)


@dataclass(frozen=True)
class PieceState:
    """A day's progress as its marker holds it (migration 1140)."""

    until: datetime
    until_uuid: UUID
    changes: int
    events: int


async def piece_states(connection: AsyncConnection, project_id: int) -> dict[date, PieceState]:
    """The project's days being built in pieces."""
    result = await connection.execute(text(_PIECE_STATE), {"project_id": project_id})
    return {
        row.day: PieceState(row.piece_until, row.piece_until_uuid, row.piece_changes, row.piece_events)
        for row in result
    }


async def too_large_to_rebuild(
    connection: AsyncConnection, project_id: int, start: datetime, end: datetime, limit: int
) -> bool:
    """More than `limit` events in [start, end): reads at most `limit` index entries."""
    params = {"project_id": project_id, "from": start, "from_uuid": _FIRST_UUID, "end": end, "offset": limit}
    return (await connection.execute(text(_DAY_EVENT_AT), params)).first() is not None


async def _clear_day(connection: AsyncConnection, params: dict[str, object]) -> None:
    """Every rollup row of the day (:project_id, :day), as rebuild_day clears it."""
    tables = (*(cube.table for cube in CUBES), "query_rollup_session_days", EXIT_ITEMS_TABLE)
    for table in (*tables, "query_rollup_sessions_folded"):
        await connection.execute(text(f"DELETE FROM {table} WHERE project_id = :project_id AND day = :day"), params)


async def build_day_piece(
    connection: AsyncConnection,
    *,
    project_id: int,
    timezone: str,
    day: date,
    start: datetime,
    end: datetime,
    changes: int,
    state: PieceState | None,
    piece_events: int,
) -> PieceProgress:
    """Merge the day's next piece (at most `piece_events` events, in key order: time, then uuid)
    into its rollups, from its emptied rollups at the first piece (`state` None, or made at
    other `changes`); the last piece is all that is left, with the events after the day of the
    sessions begun on it.
    Hold the day's lock; the caller writes the progress on the marker (or the day as built)."""
    params: dict[str, object] = {"project_id": project_id, "timezone": timezone, "day": day, "start": start, "end": end}
    if state is None or state.changes != changes:
        await _clear_day(connection, params)
        state = PieceState(start, _FIRST_UUID, changes, 0)
    params.update({"from": state.until, "from_uuid": state.until_uuid, "offset": piece_events})
    next_piece = (await connection.execute(text(_DAY_EVENT_AT), params)).first()
    to: tuple[datetime, UUID] | None = None if next_piece is None else (next_piece[0], next_piece[1])
    if to is not None:
        settled = (await connection.execute(text("SELECT now()"))).scalar_one() - PIECE_SETTLE
        # Not past what has settled (see PIECE_SETTLE); with nothing settled left, the last piece.
        if settled <= state.until:
            to = None
        elif to[0] > settled:
            to = (settled, _FIRST_UUID)
    last = to is None
    params["to"], params["to_uuid"] = (end, _FIRST_UUID) if to is None else to

    def progress(
        events: int, until: tuple[datetime, UUID] | None, *, done: bool = False, restarted: bool = False
    ) -> PieceProgress:
        at, at_uuid = (None, None) if until is None else until
        return PieceProgress(day, events, state.events + events, at, at_uuid, done, restarted, start, end)

    await connection.execute(text(_STAGE_PIECE), params)
    if last:
        events_end = (await connection.execute(text(_PIECE_EVENTS_END), params)).scalar_one()
        params["events_end"] = events_end
        if events_end is not None and events_end >= end:
            await connection.execute(text(_STAGE_PIECE_AFTER), params)
    citus = await is_citus(connection)
    sessions = list(await connection.execute(text(_PIECE_SESSIONS.format(touched=_touched_sessions(citus))), params))
    staged_days = set((await connection.execute(text(_PIECE_STAGED_DAYS), params)).scalars())
    in_day = (await connection.execute(text(_PIECE_STAGED_IN_DAY), params)).scalar_one()
    if any(session.moved for session in sessions):
        await _clear_staged_events(connection, project_id)
        return progress(0, None, restarted=True)
    earlier = {session.start_day for session in sessions} - {day}
    await _try_lock_days(connection, project_id, earlier)
    params["skip"] = sorted(staged_days - earlier - {day})
    params["sessions"] = sorted(session.session_id for session in sessions)
    params["days"] = sorted(earlier | {day})
    # The earlier days' exit-page items are kept as a merge keeps them; this day's are made once
    # it is built (marked stale, remade from its session days as a merged latest day's are).
    params["item_days"] = sorted(earlier)
    if sessions:
        # As refresh_project merges (see there for the settings): the counts, the sessions, the merge.
        await _count_staged(connection, params)
        await connection.execute(text("SELECT set_config('enable_seqscan', 'off', true)"))
        await _stage_sessions(connection, citus, params)
        await _merge_staged(connection, params)
        await connection.execute(text("SELECT set_config('enable_seqscan', 'on', true)"))
    await _clear_staged_events(connection, project_id)
    if not last:
        return progress(in_day, to)
    missing = int((await connection.execute(text(_PIECE_MISSING), params)).scalar_one())
    if missing != 0:
        return progress(in_day, None, restarted=True)
    return progress(in_day, None, done=True)


async def _clear_staged_events(connection: AsyncConnection, project_id: int) -> None:
    """The staged events and their counts gone, in the refresh's transaction: a staged copy of
    personal data never outlives it."""
    for staged in ("query_rollup_events_staged", "query_rollup_events_counted", "query_rollup_events_items"):
        await connection.execute(
            text(f"DELETE FROM {staged} WHERE project_id = :project_id"), {"project_id": project_id}
        )


async def _merge_staged(connection: AsyncConnection, params: dict[str, object]) -> None:
    """Steps 3 and 4 of refresh_project (see there): the staged events, their counts and the staged
    sessions merged into the days :days (the sessions of other days already out of the staged
    rows, or skipped by :skip), the exit-page items kept current on :item_days. Used by
    refresh_project and, for the pieces of a day too large for one rebuild, by build_day_piece;
    the caller prices scans out, stages the sessions and empties the staged events after."""
    days: list[date] = list(params["days"])  # type: ignore[call-overload]
    item_days: set[date] = set(params["item_days"])  # type: ignore[call-overload]
    # The staged tables are empty between merges, so their statistics say a row or two:
    # each cube merge probed the staged sessions once per event (nested loop) and sorted
    # its rows twice on a dozen text keys (C.UTF-8: no abbreviated keys), where a hash
    # join and hash aggregates serve at any size. Priced out for the cube merges only:
    # a 70,792-event batch of the 5000-visitor load's took 1.07 s of CPU in the eight cube
    # merges instead of 2.75 s (docs/benchmarks.md, branch refcpu2). ANALYZE of the staged
    # rows did less well, and would keep sampled session ids in pg_statistic after the
    # merge, out of erasure's reach.
    #
    # The grouping sets of a cube are hashed, one table per grain (37 for the event-name
    # cube), in MERGE_WORK_MEM: within the stack's 32MB work_mem the planner hashed only
    # some of them and sorted the partial rows (90,000 per 140,000 events, on eleven text
    # keys) for the others, and the hash tables spilled to disk (docs/benchmarks.md,
    # branch refcpu3). The memory is taken as the tables grow: ~90MB for a 140,000-event
    # batch of the 5000-visitor load, one backend, for these statements only.
    work_mem = await connection.execute(
        text(
            "SELECT current_setting('work_mem'), set_config('work_mem', :work_mem, true),"
            " set_config('enable_sort', 'off', true), set_config('enable_nestloop', 'off', true)"
        ),
        {"work_mem": MERGE_WORK_MEM},
    )
    previous_work_mem = work_mem.scalar_one()
    for cube in _MERGED_CUBES:
        await connection.execute(text(_merge_sql(cube)), params)
    await connection.execute(
        text(
            "SELECT set_config('work_mem', :work_mem, true), set_config('enable_sort', 'on', true),"
            " set_config('enable_nestloop', 'on', true)"
        ),
        {"work_mem": previous_work_mem},
    )
    # Exit pages: the pages touched sessions leave, their old rows out, the session days
    # moved and grown, their rows in (see _EXIT_OLD); the folded rows replaced last.
    #
    # The pages left and the move join the staged sessions to their session days with nested
    # loops priced out (see _SESSION_DAYS_STAGED).
    await connection.execute(text("SELECT set_config('enable_nestloop', 'off', true)"))
    pages_left: dict[date, set[str | None]] = {}
    for day in days:
        left = await connection.execute(text(_EXIT_PAGES_LEFT), {**params, "day": day})
        for row in left:
            pages_left.setdefault(row.day, set()).add(row.exit_page)
    await connection.execute(text("SELECT set_config('enable_nestloop', 'on', true)"))
    await connection.execute(text(_EXIT_OLD), params)
    if params["item_days"]:
        await connection.execute(text(_EXIT_ITEMS_OLD), params)
    # Hashed (see _SESSION_DAYS_MERGE), its join too: on the staged table's statistics
    # (a row or two) the planner joined the counts to the names in a nested loop, each
    # session day's counts against every session day's names, 11 s of CPU for 670,000
    # events under the 5000-visitor load (docs/benchmarks.md, branch refcpu3).
    await connection.execute(
        text("SELECT set_config('enable_sort', 'off', true), set_config('enable_nestloop', 'off', true)")
    )
    await connection.execute(text(_SESSION_DAYS_MERGE), params)
    await connection.execute(text("SELECT set_config('enable_sort', 'on', true)"))
    for day in days:
        await connection.execute(text(_SESSION_DAYS_MOVE), {**params, "day": day})
    await connection.execute(text("SELECT set_config('enable_nestloop', 'on', true)"))
    await connection.execute(text(_EXIT_NEW), params)
    if params["item_days"]:
        await connection.execute(text(_EXIT_ITEMS_NEW), params)
    await connection.execute(text(_FOLDED_MERGE), params)
    await connection.execute(text("DELETE FROM query_rollup_sessions_staged WHERE project_id = :project_id"), params)
    touched = {"project_id": params["project_id"], "days": days}
    for cube in CUBES:
        # A group whose sessions and events went back to none is not in a rebuild either.
        await connection.execute(
            text(
                f"DELETE FROM {cube.table} WHERE project_id = :project_id"
                " AND day = ANY(CAST(:days AS date[])) AND sessions = 0 AND events = 0"
            ),
            touched,
        )
    for day, pages in sorted(pages_left.items()):
        page_params = {
            "project_id": params["project_id"],
            "day": day,
            "pages": sorted(page for page in pages if page is not None),
            "null_page": None in pages,
        }
        await connection.execute(text(_EXIT_EMPTY), page_params)
        await connection.execute(text(_EXIT_VISITORS), page_params)
        if day in item_days:
            await connection.execute(text(_EXIT_ITEMS_LEFT_DELETE), page_params)
            await connection.execute(text(_EXIT_ITEMS_LEFT_WRITE), page_params)


async def weeks_to_build(connection: AsyncConnection, limit: int, project_id: int | None = None) -> list[WeekToBuild]:
    """Complete weeks (ended before the project's today) whose days are all current and were
    built after the week's rows were, newest first."""
    result = await connection.execute(
        text(
            "SELECT d.project_id, d.week FROM"
            " (SELECT project_id, date_trunc('week', day)::date AS week, built_changes, changes, built_at"
            " FROM query_rollup_days) d"
            " JOIN projects p ON p.project_id = d.project_id"
            " LEFT JOIN query_rollup_weeks w ON w.project_id = d.project_id AND w.week = d.week"
            " WHERE (CAST(:project_id AS bigint) IS NULL OR d.project_id = :project_id)"
            " AND d.week + 7 <= (now() AT TIME ZONE p.timezone)::date"
            " GROUP BY d.project_id, d.week, w.days_built_at"
            " HAVING bool_and(d.built_changes IS NOT NULL AND d.built_changes = d.changes)"
            " AND w.days_built_at IS DISTINCT FROM max(d.built_at)"
            " ORDER BY d.week DESC, d.project_id LIMIT :limit"
        ),
        {"limit": limit, "project_id": project_id},
    )
    return [WeekToBuild(row.project_id, row.week) for row in result]


async def rebuild_week(connection: AsyncConnection, *, project_id: int, week: date) -> bool:
    """Replace the week's page rows with the union of its days' rows; False if another process
    is rebuilding that week right now."""
    locked = await connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:namespace, hashtext(:key))"),
        {"namespace": ROLLUP_LOCK_NAMESPACE, "key": week_lock_key(project_id, week)},
    )
    if not locked.scalar_one():
        return False
    # Sorted aggregation: a sketch union's state is ~130 kB per group (see repository.aggregate).
    await connection.execute(text("SELECT set_config('enable_hashagg', 'off', true)"))
    table, weekly_table = PAGES_CUBE.table, PAGES_CUBE.weekly_table
    params = {"project_id": project_id, "week": week}
    await connection.execute(
        text(f"DELETE FROM {weekly_table} WHERE project_id = :project_id AND week = :week"), params
    )
    columns = ", ".join(("grain", *PAGES_CUBE.columns))
    # The stamp first, then the rows (two statements, each pushed down to the project's shard
    # on Citus): a day rebuilt in between makes the rows newer than the stamp, so the week
    # looks stale and is rebuilt again; never the reverse.
    await connection.execute(
        text(
            "INSERT INTO query_rollup_weeks AS w (project_id, week, days_built_at)"
            " SELECT project_id, :week, max(built_at) FROM query_rollup_days"
            " WHERE project_id = :project_id AND day BETWEEN :week AND CAST(:week AS date) + 6 GROUP BY project_id"
            " ON CONFLICT (project_id, week) DO UPDATE SET days_built_at = excluded.days_built_at"
        ),
        params,
    )
    await connection.execute(
        text(
            f"INSERT INTO {weekly_table} (project_id, week, {columns}, {CUBE_METRIC_COLUMNS})"
            f" SELECT project_id, :week, {columns}, hll_union_agg(visitors), sum(sessions), sum(bounces),"
            " sum(duration_s), sum(pageviews), sum(events), sum(session_pageviews)"
            f" FROM {table} WHERE project_id = :project_id AND day BETWEEN :week AND CAST(:week AS date) + 6"
            f" GROUP BY project_id, {columns}"
        ),
        params,
    )
    return True


# Retention cohorts (migration 0720). A week's rows count, per (active_day, first_day), the
# visitors whose first session of the week began on active_day and whose first session ever began
# on first_day. They are made of the folded sessions (query_rollup_sessions_folded, each with its
# visitor since 1200): what the days' builds and merges hold, never sessions ahead of them. They
# depend on every session begun up to the week's Sunday (first-seen days go back to the first
# ever), so a week is stamped with the latest build among the project's days up to its Sunday;
# `retention_week_states` says whether the rows are exactly current (stamp equal, every day
# current).
#
# A merge keeps them (`take_retention_out`, `put_retention_back`): the visitors whose days it
# changes (a session new to the folded rows on a day the visitor had none, or a session whose
# visitor changed) have their rows taken out of every week from the first one changed, before the
# sessions are folded, and put back after, one lookup per visitor; then `advance_retention_weeks`
# moves on the stamps of the weeks that were current. What a merge does not account for (a day
# rebuilt, built in pieces or purged, a merge that could not take its weeks' locks) leaves the
# weeks from that day on stale (their stamp behind the days' builds), and `rebuild_retention_week`
# remakes each whole. Under live ingest that was the current week in every round, ~7 us per
# visitor active in it, however few had arrived (docs/benchmarks.md, "Retention weeks kept by
# the merges").


# The Monday of a date column or parameter (date_trunc on a date goes through the session's zone).
def _monday(expression: str) -> str:
    return f"({expression} - (extract(isodow FROM {expression})::int - 1))"


@dataclass(frozen=True)
class RetentionWeekState:
    week: date  # the Monday
    days_built_at: datetime | None  # latest build among the project's days up to its Sunday
    days_current: bool  # every one of those days current
    days_built: bool  # every one of those days built at least once since it was last purged
    stamp: datetime | None  # the days_built_at the week's rows were built from; None: never built
    fresh: bool  # the rows were built less than max_staleness_s ago


async def retention_week_states(
    connection: AsyncConnection, project_id: int, first_week: date, last_week: date, max_staleness_s: float
) -> list[RetentionWeekState]:
    """Each week in [first_week, last_week] that holds a day with events, with what decides
    whether its retention rows may be read. Two statements on one project each (Citus routes
    both to one shard)."""
    params = {
        "project_id": project_id,
        "first_week": first_week,
        "last_week": last_week,
        "max_staleness_s": max_staleness_s,
    }
    days = await connection.execute(
        text(
            f"SELECT week, days_built_at, days_current, days_built FROM (SELECT week,"
            " max(built_at) OVER (ORDER BY week) AS days_built_at,"
            " bool_and(current) OVER (ORDER BY week) AS days_current,"
            " bool_and(built) OVER (ORDER BY week) AS days_built"
            f" FROM (SELECT {_monday('d.day')} AS week, max(d.built_at) AS built_at,"
            f" bool_and(d.built_changes IS NOT NULL AND d.built_changes = d.changes AND {_NOTHING_PENDING}) AS current,"
            " bool_and(d.built_changes IS NOT NULL) AS built"
            " FROM query_rollup_days d WHERE d.project_id = :project_id AND d.day <= CAST(:last_week AS date) + 6"
            " GROUP BY 1) per_week) running WHERE week >= :first_week ORDER BY week"
        ),
        params,
    )
    stamps = await connection.execute(
        text(
            "SELECT week, days_built_at, built_at > now() - make_interval(secs => :max_staleness_s) AS fresh"
            " FROM query_rollup_retention_weeks"
            " WHERE project_id = :project_id AND week BETWEEN :first_week AND :last_week"
        ),
        params,
    )
    stamped = {row.week: (row.days_built_at, bool(row.fresh)) for row in stamps}
    states = []
    for row in days:
        stamp, fresh = stamped.get(row.week, (None, False))
        states.append(
            RetentionWeekState(row.week, row.days_built_at, bool(row.days_current), bool(row.days_built), stamp, fresh)
        )
    return states


async def retention_weeks_to_build(
    connection: AsyncConnection, limit: int, project_id: int | None = None
) -> list[WeekToBuild]:
    """Weeks holding days with events whose stamp is not the latest build among the days up to
    their Sunday, newest first; only once each of those days has been built (while the first
    builds of a project's days go on, every round would otherwise make the later weeks stale)."""
    result = await connection.execute(
        text(
            "SELECT w.project_id, w.week FROM (SELECT project_id, week,"
            " max(built_at) OVER (PARTITION BY project_id ORDER BY week) AS days_built_at,"
            " bool_and(built) OVER (PARTITION BY project_id ORDER BY week) AS all_built"
            f" FROM (SELECT project_id, {_monday('day')} AS week, max(built_at) AS built_at,"
            " bool_and(built_at IS NOT NULL) AS built FROM query_rollup_days"
            " WHERE (CAST(:project_id AS bigint) IS NULL OR project_id = :project_id)"
            " GROUP BY 1, 2) per_week) w"
            " LEFT JOIN query_rollup_retention_weeks r ON r.project_id = w.project_id AND r.week = w.week"
            " WHERE w.all_built AND r.days_built_at IS DISTINCT FROM w.days_built_at"
            " ORDER BY w.week DESC, w.project_id LIMIT :limit"
        ),
        {"limit": limit, "project_id": project_id},
    )
    return [WeekToBuild(row.project_id, row.week) for row in result]


def _retention_rows_sql(*, merge: bool, citus: bool) -> str:
    """The retention rows of the folded sessions: of the visitors active in the week :week (a
    rebuild, into emptied rows), or (`merge`) of the visitors :visitors in every week from
    :first_week on, added :sign times into the rows there.

    Each visitor's first session ever is one lookup of the (project_id, distinct_id, day) index:
    it starts no later than their session in the week, so no bound is needed. The lookups name
    the project by a row's column, not the constant: on a new project's statistics (a row or two
    per project, as right after its first days are built) `project_id = <constant>` made every
    index on project_id look as good, and the planner answered min() by walking another index
    until the visitor's first row, a scan of the project's sessions per visitor (seen under the
    5000-visitor load as a 7.9 s retention week, docs/benchmarks.md, branch refcpu2); by a column
    no plan can restrict the table to the project except through the lookup's key. For the same
    reason a merge's visitors come with their project as an array (`:projects`, the project
    repeated) beside theirs, each looked up by that row's column: with the constant, a batch's
    visitors were found by reading the project's sessions of every week from :first_week (the
    (project_id, day) index) and filtering them, a cost that grew with the week
    (tools/bench/retention_merge.py). On Citus the constant stays: the statement is routed to the
    project's shard by it. No CTE: Citus pushes the statement down to the project's shard only
    without one."""
    routed = " AND {table}.project_id = :project_id" if citus else ""
    first_day = (
        "(SELECT min(g.day) FROM query_rollup_sessions_folded g WHERE g.project_id = {row}.project_id"
        f"{routed.format(table='g')} AND g.distinct_id = {{row}}.distinct_id)"
    )
    if merge:
        return (
            "INSERT INTO query_rollup_retention AS r (project_id, active_day, first_day, visitors)"
            " SELECT a.project_id, a.active_day, a.first_day, CAST(:sign AS bigint) * count(*)"
            f" FROM (SELECT f.project_id, min(f.day) AS active_day, {first_day.format(row='v')} AS first_day"
            " FROM unnest(CAST(:projects AS bigint[]), CAST(:visitors AS text[])) AS v(project_id, distinct_id)"
            " JOIN query_rollup_sessions_folded f ON f.project_id = v.project_id"
            f"{routed.format(table='f')} AND f.distinct_id = v.distinct_id AND f.day >= :first_week"
            f" GROUP BY f.project_id, v.project_id, v.distinct_id, {_monday('f.day')}) a"
            " GROUP BY a.project_id, a.active_day, a.first_day"
            " ON CONFLICT (project_id, active_day, first_day) DO UPDATE SET visitors = r.visitors + excluded.visitors"
        )
    return (
        "INSERT INTO query_rollup_retention (project_id, active_day, first_day, visitors)"
        " SELECT a.project_id, a.active_day, a.first_day, count(*)"
        f" FROM (SELECT f.project_id, min(f.day) AS active_day, {first_day.format(row='f')} AS first_day"
        " FROM query_rollup_sessions_folded f WHERE f.project_id = :project_id"
        " AND f.day BETWEEN :week AND CAST(:week AS date) + 6"
        " GROUP BY f.project_id, f.distinct_id) a"
        " GROUP BY a.project_id, a.active_day, a.first_day"
    )


async def rebuild_retention_week(connection: AsyncConnection, *, project_id: int, week: date) -> bool:
    """Replace the week's retention rows; False if another process holds the week's lock (a
    builder, a merge keeping the week, or a purge)."""
    if not await _try_lock_weeks(connection, project_id, [week]):
        return False
    params: dict[str, object] = {"project_id": project_id, "week": week}
    await connection.execute(
        text(
            "DELETE FROM query_rollup_retention WHERE project_id = :project_id"
            " AND active_day BETWEEN :week AND CAST(:week AS date) + 6"
        ),
        params,
    )
    # The stamp first, then the rows, as in rebuild_week: a day rebuilt in between leaves the
    # week stale (rebuilt again), never current with older rows.
    await connection.execute(
        text(
            "INSERT INTO query_rollup_retention_weeks AS w (project_id, week, days_built_at, built_at)"
            " SELECT project_id, :week, max(built_at), now() FROM query_rollup_days"
            " WHERE project_id = :project_id AND day <= CAST(:week AS date) + 6 GROUP BY project_id"
            " ON CONFLICT (project_id, week) DO UPDATE"
            " SET days_built_at = excluded.days_built_at, built_at = excluded.built_at"
        ),
        params,
    )
    citus = await is_citus(connection)
    await connection.execute(text(_retention_rows_sql(merge=False, citus=citus)), params)
    return True


@dataclass(frozen=True)
class SessionVisitor:
    """A merged session new to the folded rows (folded_visitor None) or whose visitor changed:
    its visitor and start day, and as folded."""

    distinct_id: str
    day: date
    folded_visitor: str | None
    folded_day: date | None


# Of the (visitor, day) pairs a merge folds sessions on, those on which the visitor has no folded
# session yet: the pairs whose visitor's retention rows change (one key lookup each).
def _new_visitor_days_sql(citus: bool) -> str:
    # Each pair looked up on its own (LIMIT 1 keeps the lookup a parameterized scan), the project
    # by the row's column (see _retention_rows_sql).
    routed = " AND g.project_id = :project_id" if citus else ""
    return (
        "SELECT v.distinct_id, v.day FROM unnest(CAST(:projects AS bigint[]), CAST(:visitors AS text[]),"
        " CAST(:days AS date[])) AS v(project_id, distinct_id, day)"
        " LEFT JOIN LATERAL (SELECT true AS folded FROM query_rollup_sessions_folded g"
        f" WHERE g.project_id = v.project_id{routed} AND g.distinct_id = v.distinct_id AND g.day = v.day LIMIT 1) g"
        " ON true WHERE g.folded IS NULL"
    )


_NEW_VISITOR_DAYS_SQL = {citus: _new_visitor_days_sql(citus) for citus in (False, True)}
_RETENTION_ROWS_SQL = {citus: _retention_rows_sql(merge=True, citus=citus) for citus in (False, True)}


@dataclass(frozen=True)
class RetentionChange:
    """The visitors whose retention rows a merge took out, in the weeks from first_week on."""

    visitors: tuple[str, ...]
    first_week: date | None


async def take_retention_out(
    connection: AsyncConnection, project_id: int, sessions: list[SessionVisitor], last_day: date | None
) -> RetentionChange | None:
    """Before the merged sessions are folded: the rows of the visitors whose days they change
    (a visitor's first session on a day, and both visitors of a session whose visitor changed)
    taken out of every week from the first one changed to last_day's, under those weeks' locks;
    None if one is held (a week being rebuilt or purged: the weeks go stale and are rebuilt)."""
    pairs = sorted({(session.distinct_id, session.day) for session in sessions})
    changed: set[tuple[str, date]] = set()
    if pairs:
        result = await connection.execute(
            text(_NEW_VISITOR_DAYS_SQL[await is_citus(connection)]),
            {
                "project_id": project_id,
                "projects": [project_id] * len(pairs),
                "visitors": [pair[0] for pair in pairs],
                "days": [pair[1] for pair in pairs],
            },
        )
        changed = {(row.distinct_id, row.day) for row in result}
    # The visitor a session leaves may have had no other session on its day.
    changed |= {
        (session.folded_visitor, session.folded_day)
        for session in sessions
        if session.folded_visitor is not None and session.folded_day is not None
    }
    if not changed:
        return RetentionChange((), None)
    first_week = week_of(min(day for _, day in changed))
    last_week = first_week if last_day is None else max(first_week, week_of(last_day))
    weeks = [first_week + timedelta(weeks=offset) for offset in range((last_week - first_week).days // 7 + 1)]
    if not await _try_lock_weeks(connection, project_id, weeks):
        return None
    change = RetentionChange(tuple(sorted({visitor for visitor, _ in changed})), first_week)
    await _add_retention_rows(connection, project_id, change, sign=-1)
    return change


async def _try_lock_weeks(connection: AsyncConnection, project_id: int, weeks: list[date]) -> bool:
    """The weeks' locks (as lock_days takes them), every one tried (an aggregate reads every
    row), none waited for; False if one is held elsewhere."""
    locked = await connection.execute(
        text(
            "SELECT bool_and(pg_try_advisory_xact_lock(:namespace, hashtext(key)))"
            " FROM unnest(CAST(:keys AS text[])) AS key"
        ),
        {"namespace": ROLLUP_LOCK_NAMESPACE, "keys": [week_lock_key(project_id, week) for week in weeks]},
    )
    return bool(locked.scalar_one())


async def put_retention_back(connection: AsyncConnection, project_id: int, change: RetentionChange) -> None:
    """After the staged sessions are folded: the visitors' rows as they are now, and the rows
    left at no visitor gone."""
    if change.first_week is None:
        return
    await _add_retention_rows(connection, project_id, change, sign=1)
    await connection.execute(
        text(
            "DELETE FROM query_rollup_retention WHERE project_id = :project_id"
            " AND active_day >= :first_week AND visitors = 0"
        ),
        {"project_id": project_id, "first_week": change.first_week},
    )


async def _add_retention_rows(
    connection: AsyncConnection, project_id: int, change: RetentionChange, *, sign: int
) -> None:
    citus = await is_citus(connection)
    await connection.execute(
        text(_RETENTION_ROWS_SQL[citus]),
        {
            "project_id": project_id,
            "projects": [project_id] * len(change.visitors),
            "visitors": list(change.visitors),
            "first_week": change.first_week,
            "sign": sign,
        },
    )


async def current_retention_weeks(
    connection: AsyncConnection, project_id: int, first_week: date, last_week: date
) -> dict[date, datetime]:
    """The weeks in [first_week, last_week] whose rows are as current as their days' builds
    (stamp equal to the latest build among the days up to their Sunday), with that stamp."""
    states = await retention_week_states(connection, project_id, first_week, last_week, 0)
    return {
        state.week: state.stamp for state in states if state.stamp is not None and state.stamp == state.days_built_at
    }


async def advance_retention_weeks(
    connection: AsyncConnection, project_id: int, current: dict[date, datetime], last_week: date
) -> None:
    """After a refresh whose every change to the folded sessions a merge kept in the retention
    rows (take_retention_out, put_retention_back) has written its days' markers: the weeks that
    were current before it (``current``) are stamped with their days' latest build now, those
    whose days are all built, and whose lock it holds or can take (a week held elsewhere is being
    rebuilt or purged)."""
    if not current:
        return
    for state in await retention_week_states(connection, project_id, min(current), last_week, 0):
        old = current.get(state.week)
        if old is None or not state.days_built or state.days_built_at == old:
            continue
        if not await _try_lock_weeks(connection, project_id, [state.week]):
            continue
        await connection.execute(
            text(
                "UPDATE query_rollup_retention_weeks SET days_built_at = :days_built_at, built_at = now()"
                " WHERE project_id = :project_id AND week = :week AND days_built_at = :old"
            ),
            {"project_id": project_id, "week": state.week, "days_built_at": state.days_built_at, "old": old},
        )
