"""All SQL of the query service's reads. Callers own the transaction.

Statements are assembled only from the whitelists below (column names, metric expressions,
time-bucket expressions keyed by the API's own names) and bind parameters; no value from a
request is ever spliced into SQL text.

Two ways to answer an aggregate query, with the same semantics:
- raw: from the range's events (exact);
- cube: from the per-day rollups (services/query/rollup_repository.py) for the days and weeks a
  plan names, plus the same cube computed on the fly from events for the plan's other days.
  Unique visitors there are HyperLogLog unions (approximate); every other metric is exact.
Which way, which cube and which days is decided by services/query/planner.py, not here.

Semantics shared by both (the API reference, README's "Dashboard queries", says the same):
- a session is a session_id's non-bot events, whatever days they span: one row of
  `query_sessions`, kept current by triggers on events (migrations 0640, 0680);
- a session belongs to the range, and to the time bucket, in which it started (its first
  event); its duration, pageviews per session, entry and exit pages and bounce are the whole
  session's, including events after the range's end. A session that started before the range
  is not one of its sessions, though its events inside the range count as pageviews and events;
- pageviews, events and visitors count the events inside the range (and bucket), by their time;
- the visit dimensions (referrer, UTM tags, country, browser, OS, device, entry and exit page)
  of an event are its session's, so a later internal pageview keeps the visit's source;
- with an event dimension (page, domain, event name) a session counts once in each group it
  has an event in, anywhere in the session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.models.query_session import ended_at_or_after
from services.query.vocabulary import (
    DIMENSIONS,
    HLL_LOG2M,
    INTEGER_METRICS,
    VISIT_DIMENSIONS,
    Cube,
    Dimension,
    DimensionSpec,
    FilterDimension,
    Metric,
    grain_id,
)


async def configure_transaction(connection: AsyncConnection) -> None:
    """Settings for the current transaction only (SET LOCAL semantics, safe under PgBouncer).

    The per-session CTE's row estimate is Postgres's default of 200 whatever the range holds,
    which makes the planner join it to the events with a nested loop: quadratic, minutes on a
    busy day. A hash join is right for every statement here.

    On Citus a statement pushed down to a worker is planned with the worker's settings, not
    the transaction's, unless Citus sends the transaction's SET LOCAL commands along
    (`citus.propagate_set_commands`; on plain Postgres a placeholder that does nothing). So
    these are SET LOCAL commands, not set_config() calls, which Citus does not propagate.
    Without it a worker with fresh-from-insert statistics joined a 6,000-event range with a
    nested loop past the 10 s statement timeout (the Citus suite's flaky
    test_visitor_estimates_stay_within_the_stated_bound, seen in pg_stat_activity: the worker's
    backend busy on the CTE for the whole 10 s).
    """
    await connection.execute(text("SET LOCAL citus.propagate_set_commands TO 'local'"))
    await connection.execute(text("SET LOCAL enable_nestloop TO off"))


# The columns of `base` (an event joined with its session): event columns, then the session's.
_VISITS = [DIMENSIONS[name] for name in VISIT_DIMENSIONS]
_SESSION_COLUMNS = (
    "session_id, s_started_at, s_day, s_visitor, s_duration, s_pageviews, s_events, entry_page, exit_page, "
    + ", ".join(visit.raw for visit in _VISITS)
)


def session_ctes(
    *,
    day_condition: bool = False,
    events_after_end: bool = True,
    materialized: bool = False,
    exclude_pending: bool = False,
) -> str:
    """`sess`, `ev` and `base` for the window [:start, :end) in :timezone.

    - `sess`: the sessions that overlap the window, with `s_in_range` true for those that
      started in it (and, with `day_condition`, on one of :computed_days);
    - `ev`: the non-bot events from :start, with their local `day` and `e_in_range` (before
      :end, and on one of :computed_days with `day_condition`). With `events_after_end` it
      also holds the events after :end of the sessions that started in the window (an event
      dimension's session membership looks at the whole session);
    - `base`: each event of `ev` with its session's columns.

    With `exclude_pending`, `ev` leaves out the events not yet merged into the rollups (listed
    in query_rollup_pending): a rollup rebuild counts only what the next merge will not.
    """
    days = (
        " AND (started_at AT TIME ZONE :timezone)::date = ANY(CAST(:computed_days AS date[]))" if day_condition else ""
    )
    event_days = (
        " AND (occurred_at AT TIME ZONE :timezone)::date = ANY(CAST(:computed_days AS date[]))" if day_condition else ""
    )
    keyword = "AS MATERIALIZED" if materialized else "AS"
    visit_columns = ", ".join(f"{visit.rolled} AS {visit.raw}" for visit in _VISITS)
    events_end = (
        "occurred_at <= greatest(:end, (SELECT max(s_ended_at) FROM sess WHERE s_in_range))"
        if events_after_end
        else "occurred_at < :end"
    )
    pending = (
        "pend AS MATERIALIZED (SELECT k.occurred_at, k.event_uuid FROM query_rollup_pending p,"
        " unnest(p.occurred_at, p.event_uuid) AS k(occurred_at, event_uuid) WHERE p.project_id = :project_id), "
        if exclude_pending
        else ""
    )
    not_pending = (
        " AND (occurred_at, event_uuid) NOT IN (SELECT occurred_at, event_uuid FROM pend)" if exclude_pending else ""
    )
    return (
        f"{pending}sess {keyword} (SELECT session_id, started_at AS s_started_at, ended_at AS s_ended_at,"
        " (started_at AT TIME ZONE :timezone)::date AS s_day, distinct_id AS s_visitor,"
        " extract(epoch FROM ended_at - started_at)::float8 AS s_duration, pageviews::bigint AS s_pageviews,"
        f" events::bigint AS s_events, entry_page, exit_page, {visit_columns}, first_uuid AS s_first_uuid,"
        " entry_uuid AS s_entry_uuid,"
        f" (started_at >= :start AND started_at < :end{days}) AS s_in_range"
        f" FROM query_sessions WHERE project_id = :project_id AND {ended_at_or_after(':start')} AND started_at < :end),"
        " ev AS (SELECT occurred_at, name, distinct_id, session_id, path, domain,"
        " (occurred_at AT TIME ZONE :timezone)::date AS day,"
        f" (occurred_at < :end{event_days}) AS e_in_range"
        f" FROM events WHERE project_id = :project_id AND occurred_at >= :start AND {events_end} AND NOT is_bot"
        f"{not_pending}),"
        f" base {keyword} (SELECT ev.occurred_at, ev.name, ev.distinct_id, ev.path, ev.domain, ev.day, ev.e_in_range,"
        f" sess.s_in_range, {', '.join('sess.' + column.strip() for column in _SESSION_COLUMNS.split(','))}"
        " FROM ev JOIN sess USING (session_id))"
    )


CUBE_METRIC_COLUMNS = "visitors, sessions, bounces, duration_s, pageviews, events, session_pageviews"

# Rows of the union `u` that both paths aggregate: an event row ('e') per event inside the
# window, with its session's visit attributes; a session row ('s') per session that started in
# the window and group it belongs to, with the whole session's figures.
_EVENT_ROW_METRICS = (
    "'e' AS kind, distinct_id, (name = 'pageview')::int AS pv, 1 AS ev, NULL::text AS member,"
    " NULL::float8 AS m_duration, NULL::bigint AS m_pageviews, NULL::bigint AS m_events"
)
# The rollups' event rows, pre-aggregated per session and visitor (their GROUP BY follows): the
# cubes' grouping sets then read one row per session and day instead of one per event.
_EVENT_ROWS_PER_SESSION = (
    "'e' AS kind, distinct_id, count(*) FILTER (WHERE name = 'pageview') AS pv, count(*) AS ev, NULL::text AS member,"
    " NULL::float8 AS m_duration, NULL::bigint AS m_pageviews, NULL::bigint AS m_events"
)
_SESSION_ROW_METRICS = (
    "'s' AS kind, NULL::text AS distinct_id, 0 AS pv, 0 AS ev, session_id AS member,"
    " s_duration AS m_duration, s_pageviews AS m_pageviews, s_events AS m_events"
)
# A session's bounce: a single pageview and nothing else.
_MEMBER_BOUNCE = "kind = 's' AND m_pageviews = 1 AND m_events = 1"
_VISIT_RAW_COLUMNS = ", ".join(visit.raw for visit in _VISITS)
# A session row's time is its start.
_SESSION_AS_ROW = f"SELECT s_started_at AS occurred_at, s_day AS day, path, domain, name, {_SESSION_COLUMNS}"


def cube_select_sql(cube: Cube, grains: tuple[frozenset[str], ...]) -> str:
    """The cube's rows for these grains, computed from `sess` and `base` (rollup build and tail)."""
    sets = ", ".join(
        "(" + ", ".join(f"u.{name}" for name in VISIT_DIMENSIONS if name in grain) + ")" for grain in grains
    )
    grouped = frozenset().union(*grains)
    # Columns in no grouping set cannot be selected; they are NULL in every row anyway.
    visit_columns = ", ".join(f"u.{name}" if name in grouped else f"NULL::text AS {name}" for name in VISIT_DIMENSIONS)
    if len(grains) == 1:
        grain = str(grain_id(grains[0]))
    else:
        # GROUPING() takes only grouped columns; every build lists all of them somewhere.
        if grouped != frozenset(VISIT_DIMENSIONS):
            raise ValueError("a multi-grain rollup build must group by every visit dimension")
        grain = "GROUPING(" + ", ".join(f"u.{name}" for name in VISIT_DIMENSIONS) + ")"
    metrics = (
        f"coalesce(hll_add_agg(hll_hash_text(u.distinct_id), {HLL_LOG2M}) FILTER (WHERE u.kind = 'e'),"
        f" hll_empty({HLL_LOG2M})) AS visitors,"
        " count(*) FILTER (WHERE u.kind = 's') AS sessions,"
        " count(*) FILTER (WHERE u.kind = 's' AND u.m_pageviews = 1 AND u.m_events = 1) AS bounces,"
        " coalesce(sum(u.m_duration), 0) AS duration_s,"
        " coalesce(sum(u.pv), 0) AS pageviews,"
        " coalesce(sum(u.ev), 0) AS events,"
        " coalesce(sum(u.m_pageviews), 0) AS session_pageviews"
    )
    named = ", ".join(f"{visit.raw} AS {name}" for name, visit in zip(VISIT_DIMENSIONS, _VISITS, strict=True))
    if not cube.fixed_columns:
        union = (
            f"SELECT day, {named}, {_EVENT_ROWS_PER_SESSION} FROM base WHERE e_in_range"
            f" GROUP BY day, session_id, distinct_id, {_VISIT_RAW_COLUMNS}"
            f" UNION ALL SELECT s_day AS day, {named}, {_SESSION_ROW_METRICS} FROM sess WHERE s_in_range"
        )
        return (
            f"SELECT u.day, {grain} AS grain, {visit_columns}, {metrics}"
            f" FROM ({union}) u GROUP BY u.day, GROUPING SETS ({sets})"
        )
    if not cube.session_rows:
        # Event rows only, by every fixed column (see Cube.session_rows).
        values = ", ".join(f"{column.event} AS {column.name}" for column in cube.fixed_columns)
        keys = ", ".join(column.event for column in cube.fixed_columns)
        names = ", ".join(f"u.{column.name}" for column in cube.fixed_columns)
        union = (
            f"SELECT day, {values}, {named}, {_EVENT_ROWS_PER_SESSION} FROM base WHERE e_in_range"
            f" GROUP BY day, {keys}, session_id, distinct_id, {_VISIT_RAW_COLUMNS}"
        )
        return (
            f"SELECT u.day, {grain} AS grain, {names}, {visit_columns}, {metrics}"
            f" FROM ({union}) u GROUP BY u.day, {names}, GROUPING SETS ({sets})"
        )
    (fixed,) = cube.fixed_columns
    if fixed.per_event:
        # A session row per (session, value among its events), so a session counts once per page.
        session_rows = (
            f"SELECT DISTINCT s_day AS day, {fixed.session} AS {fixed.name}, {named}, {_SESSION_ROW_METRICS}"
            " FROM base WHERE s_in_range"
        )
    else:
        session_rows = (
            f"SELECT s_day AS day, {fixed.session} AS {fixed.name}, {named}, {_SESSION_ROW_METRICS}"
            " FROM sess WHERE s_in_range"
        )
    union = (
        f"SELECT day, {fixed.event} AS {fixed.name}, {named}, {_EVENT_ROWS_PER_SESSION} FROM base WHERE e_in_range"
        f" GROUP BY day, {fixed.event}, session_id, distinct_id, {_VISIT_RAW_COLUMNS}"
        f" UNION ALL {session_rows}"
    )
    return (
        f"SELECT u.day, {grain} AS grain, u.{fixed.name}, {visit_columns}, {metrics}"
        f" FROM ({union}) u GROUP BY u.day, u.{fixed.name}, GROUPING SETS ({sets})"
    )


# Raw: over the union of event rows and session rows (see cube_select_sql).
_RAW_METRICS: dict[Metric, str] = {
    "visitors": "count(DISTINCT distinct_id)",
    "pageviews": "coalesce(sum(pv), 0)",
    "events": "coalesce(sum(ev), 0)",
    "sessions": "count(*) FILTER (WHERE kind = 's')",
    "bounce_rate": (
        f"coalesce(round(100.0 * count(*) FILTER (WHERE {_MEMBER_BOUNCE})"
        " / nullif(count(*) FILTER (WHERE kind = 's'), 0), 2), 0)"
    ),
    "visit_duration": (
        "coalesce(round((sum(m_duration) / nullif(count(*) FILTER (WHERE kind = 's'), 0))::numeric, 2), 0)"
    ),
    "views_per_session": (
        "coalesce(round(sum(m_pageviews)::numeric / nullif(count(*) FILTER (WHERE kind = 's'), 0), 2), 0)"
    ),
}
_CUBE_METRICS: dict[Metric, str] = {
    "visitors": "coalesce(round(hll_cardinality(hll_union_agg(visitors)))::bigint, 0)",
    "pageviews": "coalesce(sum(pageviews), 0)::bigint",
    "events": "coalesce(sum(events), 0)::bigint",
    "sessions": "coalesce(sum(sessions), 0)::bigint",
    "bounce_rate": "coalesce(round(100.0 * sum(bounces) / nullif(sum(sessions), 0), 2), 0)",
    "visit_duration": "coalesce(round((sum(duration_s) / nullif(sum(sessions), 0))::numeric, 2), 0)",
    "views_per_session": "coalesce(round(sum(session_pageviews)::numeric / nullif(sum(sessions), 0), 2), 0)",
}


class InvalidPatternError(ValueError):
    """A 'matches' filter held a pattern that Postgres cannot compile."""


@dataclass(frozen=True)
class FilterClause:
    dimension: FilterDimension
    operator: str  # is | is_not | contains | matches
    values: tuple[str, ...]
    includes_null: bool = False


@dataclass(frozen=True)
class Ordering:
    field: str  # a metric name or a dimension name of the query
    descending: bool


@dataclass(frozen=True)
class AggregateQuery:
    project_id: int
    timezone: str
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC
    metrics: tuple[Metric, ...]
    dimensions: tuple[Dimension, ...]
    filters: tuple[FilterClause, ...]
    order_by: tuple[Ordering, ...]
    limit: int
    offset: int


@dataclass(frozen=True)
class CubePlan:
    """Answer from `cube` rows of `grain`: weekly rows for `rolled_weeks` (their Mondays), daily
    rollup rows for `rolled_days`, rows computed from events for `computed_days`."""

    cube: Cube
    grain: frozenset[str]
    rolled_days: tuple[date, ...]
    computed_days: tuple[date, ...]
    computed_start: datetime | None  # UTC bounds around computed_days, so partitions are pruned
    computed_end: datetime | None
    rolled_weeks: tuple[date, ...] = ()


@dataclass(frozen=True)
class SessionDayPlan:
    """Answer a query grouped by page or event name from the session days' pages and event names
    (query_rollup_session_days, migration 0850) for `rolled_days`, and from events for
    `computed_days`: exact (visitors counted distinct), under visit, exit-page and that
    dimension's own filters (planner.session_day_plan)."""

    rolled_days: tuple[date, ...]
    computed_days: tuple[date, ...]
    computed_start: datetime | None
    computed_end: datetime | None


@dataclass(frozen=True)
class ExitItemsPlan:
    """Answer a query grouped by page or event name under an exit-page chip (and that dimension's
    own filters) from the exit-page items (query_rollup_exit_items, migration 0900) for
    `rolled_days`, from the session days for `session_days` (rolled up, their items stale) and
    from events for `computed_days`: visitors from sketches (planner.exit_items_plan)."""

    rolled_days: tuple[date, ...]
    computed_days: tuple[date, ...]
    computed_start: datetime | None
    computed_end: datetime | None
    session_days: tuple[date, ...] = ()
    table: str = "query_rollup_exit_items"


@dataclass(frozen=True)
class GoalPairsPlan:
    """Answer a query grouped by page, visitors only, under an `is` filter listing saved goal
    pages and filters on two visit dimensions (the Goals card's page goals under two visit chips)
    from the goal pairs of `grain` (query_rollup_goal_pairs, migration 1000) for `rolled_days`,
    from the session days for `session_days` (rolled up, their goal pairs not current) and from
    events for `computed_days`: visitors from sketches (planner.goal_pairs_plan)."""

    grain: int
    rolled_days: tuple[date, ...]
    session_days: tuple[date, ...]
    computed_days: tuple[date, ...]
    computed_start: datetime | None
    computed_end: datetime | None
    table: str = "query_rollup_goal_pairs"


@dataclass(frozen=True)
class AggregateRow:
    dimensions: tuple[str | None, ...]
    # Counts as int; rates and durations as float.
    metrics: tuple[float, ...]


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filter_sql(clause: FilterClause, column: str, param: str, params: dict[str, Any]) -> str:
    # Only ever used in WHERE, where NULL drops a row like false does; the positive operators
    # stay bare so that indexes on the rollups apply. `is_not` must keep rows whose value is
    # NULL (unless null is among its values), hence the coalesce there.
    if clause.operator in ("is", "is_not"):
        params[param] = list(clause.values)
        equal = f"{column} = ANY(CAST(:{param} AS text[]))"
        if clause.operator == "is":
            return f"({equal} OR {column} IS NULL)" if clause.includes_null else equal
        if clause.includes_null:
            return f"(NOT coalesce({equal}, false) AND {column} IS NOT NULL)"
        return f"NOT coalesce({equal}, false)"
    if clause.operator == "contains":
        params[param] = [_like_pattern(value) for value in clause.values]
        return f"{column} ILIKE ANY(CAST(:{param} AS text[]))"
    if clause.operator == "matches":
        params[param] = list(clause.values)
        return f"{column} ~ ANY(CAST(:{param} AS text[]))"
    raise ValueError(f"unknown operator {clause.operator}")


def _order_and_page(query: AggregateQuery, dimension_aliases: list[str], params: dict[str, Any]) -> str:
    alias_of: dict[str, str] = dict(zip(query.dimensions, dimension_aliases, strict=True))
    alias_of.update({name: name for name in query.metrics})
    order_terms = [
        f"{alias_of[ordering.field]} {'DESC' if ordering.descending else 'ASC'} NULLS LAST"
        for ordering in query.order_by
    ]
    # Dimensions last, so equal metric values page in a stable order.
    order_terms.extend(f"{alias} ASC NULLS LAST" for alias in dimension_aliases)
    params["limit"] = query.limit
    params["offset"] = query.offset
    group_by = f" GROUP BY {', '.join(dimension_aliases)}" if dimension_aliases else ""
    order = f" ORDER BY {', '.join(order_terms)}" if order_terms else ""
    return f"{group_by}{order} LIMIT :limit OFFSET :offset"


def _rolled(spec: DimensionSpec) -> str:
    if spec.rolled is None:
        raise ValueError("the plan's cube does not hold this dimension")
    return spec.rolled


def _raw(spec: DimensionSpec) -> str:
    return spec.raw


def _dimensions_and_filters(
    query: AggregateQuery, column_of: Callable[[DimensionSpec], str], params: dict[str, Any]
) -> tuple[list[str], list[str], str]:
    """The dimensions' aliases, their `<expression> AS <alias>` columns, and the filters' WHERE."""
    aliases = [f"d{index}" for index in range(len(query.dimensions))]
    columns = [
        f"{column_of(DIMENSIONS[name])} AS {alias}" for name, alias in zip(query.dimensions, aliases, strict=True)
    ]
    conditions = [
        _filter_sql(clause, column_of(DIMENSIONS[clause.dimension]), f"f{index}", params)
        for index, clause in enumerate(query.filters)
    ]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return aliases, columns, where


def _raw_sql(query: AggregateQuery) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {
        "project_id": query.project_id,
        "start": query.start,
        "end": query.end,
        "timezone": query.timezone,
    }
    dimension_aliases, dimension_columns, where = _dimensions_and_filters(query, _raw, params)
    conditions = where.removeprefix(" WHERE ")
    names = {*query.dimensions, *(clause.dimension for clause in query.filters)}
    per_event = any(DIMENSIONS[name].per_event for name in names)
    dimensions = "".join(f"{column}, " for column in dimension_columns)
    event_rows = f"SELECT {dimensions}{_EVENT_ROW_METRICS} FROM base WHERE e_in_range" + (
        f" AND {conditions}" if conditions else ""
    )
    if per_event:
        # One row per session and group it has an event in.
        session_rows = (
            f"SELECT DISTINCT {dimensions}{_SESSION_ROW_METRICS} FROM ({_SESSION_AS_ROW} FROM base WHERE s_in_range) b"
            f"{where}"
        )
    else:
        session_rows = (
            f"SELECT {dimensions}{_SESSION_ROW_METRICS} FROM (SELECT s_started_at AS occurred_at, s_day AS day,"
            f" {_SESSION_COLUMNS} FROM sess WHERE s_in_range) b{where}"
        )
    metric_columns = ", ".join(f"{_RAW_METRICS[name]} AS {name}" for name in query.metrics)
    sql = (
        f"WITH {session_ctes(events_after_end=per_event)}"
        f" SELECT {', '.join([*dimension_aliases, metric_columns])}, count(*) OVER () AS total_rows"
        f" FROM ({event_rows} UNION ALL {session_rows}) u"
        f"{_order_and_page(query, dimension_aliases, params)}"
    )
    return sql, params


def _cube_sql(query: AggregateQuery, plan: CubePlan) -> tuple[str, dict[str, Any]]:
    cube = plan.cube
    columns = ", ".join(("day", *cube.columns))
    params: dict[str, Any] = {
        "project_id": query.project_id,
        "grain": grain_id(plan.grain),
        "rolled_days": list(plan.rolled_days),
    }
    parts = [
        f"SELECT {columns}, {CUBE_METRIC_COLUMNS} FROM {cube.table}"
        " WHERE project_id = :project_id AND grain = :grain AND day = ANY(CAST(:rolled_days AS date[]))"
    ]
    if plan.rolled_weeks:
        if cube.weekly_table is None:
            raise ValueError(f"{cube.table} has no weekly rows")
        params["rolled_weeks"] = list(plan.rolled_weeks)
        # A week's rows stand for its seven days; only undivided time (no day buckets) may use them.
        parts.append(
            f"SELECT week AS day, {', '.join(cube.columns)}, {CUBE_METRIC_COLUMNS} FROM {cube.weekly_table}"
            " WHERE project_id = :project_id AND grain = :grain AND week = ANY(CAST(:rolled_weeks AS date[]))"
        )
    ctes = ""
    if plan.computed_days:
        params.update(
            start=plan.computed_start,
            end=plan.computed_end,
            timezone=query.timezone,
            computed_days=list(plan.computed_days),
        )
        ctes = f"{session_ctes(day_condition=True, events_after_end=cube.per_event)}, "
        parts.append(f"SELECT {columns}, {CUBE_METRIC_COLUMNS} FROM ({cube_select_sql(cube, (plan.grain,))}) computed")
    dimension_aliases, dimension_columns, where = _dimensions_and_filters(query, _rolled, params)
    metric_columns = ", ".join(f"{_CUBE_METRICS[name]} AS {name}" for name in query.metrics)
    sql = (
        f"WITH {ctes}cube AS ({' UNION ALL '.join(parts)})"
        f" SELECT {', '.join([*dimension_columns, metric_columns])}, count(*) OVER () AS total_rows"
        f" FROM cube{where}{_order_and_page(query, dimension_aliases, params)}"
    )
    return sql, params


# The session days' rows (migration 0850) as rows of `u` for _session_day_sql: per visitor, the
# session's exit page and visit, a value of the grouped dimension and its events and pageviews.
_SESSION_DAY_VISITS = ", ".join(f"sd.{name}" for name in VISIT_DIMENSIONS)
_SESSION_DAYS_WHERE = "sd.project_id = :project_id AND sd.day = ANY(CAST(:rolled_days AS date[])){overlap}"
_SESSION_DAY_ROWS = {
    # A page's events are not counted per page (the rows hold which pages, not how often).
    "page": (
        f"SELECT sd.distinct_id, sd.exit_page, {_SESSION_DAY_VISITS}, x.value AS page, 0 AS ev, 0 AS pv"
        f" FROM query_rollup_session_days sd CROSS JOIN unnest(sd.pages) AS x(value) WHERE {_SESSION_DAYS_WHERE}"
    ),
    # Each name with its events (pageviews excepted: the pageviews column counts them).
    "event_name": (
        f"SELECT sd.distinct_id, sd.exit_page, {_SESSION_DAY_VISITS}, x.value AS event_name, x.n AS ev, 0 AS pv"
        " FROM query_rollup_session_days sd CROSS JOIN unnest(sd.event_names, sd.event_counts) AS x(value, n)"
        f" WHERE {_SESSION_DAYS_WHERE}"
        f" UNION ALL SELECT sd.distinct_id, sd.exit_page, {_SESSION_DAY_VISITS}, 'pageview' AS event_name,"
        " sd.pageviews AS ev, sd.pageviews AS pv FROM query_rollup_session_days sd"
        f" WHERE {_SESSION_DAYS_WHERE} AND sd.pageviews > 0"
    ),
}
# The page rows under an `is` filter on the page (the Goals card's page goals): one row per
# session day and listed page it holds.
_SESSION_DAY_LISTED_PAGES = (
    f"SELECT sd.distinct_id, sd.exit_page, {_SESSION_DAY_VISITS}, x.value AS page, 0 AS ev, 0 AS pv"
    " FROM query_rollup_session_days sd CROSS JOIN unnest(CAST(:overlap AS text[])) AS x(value)"
    " WHERE sd.project_id = :project_id AND sd.day = ANY(CAST(:rolled_days AS date[])) AND x.value = ANY(sd.pages)"
)
_SESSION_DAY_METRICS: dict[Metric, str] = {
    "visitors": "count(DISTINCT distinct_id)",
    "events": "coalesce(sum(ev), 0)",
    "pageviews": "coalesce(sum(pv), 0)",
}


def _session_day_sql(query: AggregateQuery, plan: SessionDayPlan) -> tuple[str, dict[str, Any]]:
    (dimension,) = query.dimensions
    params: dict[str, Any] = {"project_id": query.project_id, "rolled_days": list(plan.rolled_days)}
    # Under `is` on the grouped dimension (the Goals card's goals), only the session days whose
    # array holds one of the values are unnested (implied by the filter; a cheap test first).
    listed = [
        clause
        for clause in query.filters
        if clause.dimension == dimension and clause.operator == "is" and not clause.includes_null
    ]
    overlap = ""
    rows = _SESSION_DAY_ROWS[dimension]
    if listed and dimension == "page":
        # A page's rows only say which session days hold it, so each listed page is tested for
        # containment rather than every page of every session day unnested (docs/benchmarks.md,
        # "Goals under two visit chips ... migration 0920").
        params["overlap"] = list(listed[0].values)
        rows = _SESSION_DAY_LISTED_PAGES
    elif listed and "pageview" not in listed[0].values:
        params["overlap"] = list(listed[0].values)
        overlap = " AND sd.event_names && CAST(:overlap AS text[])"
    parts = [rows.format(overlap=overlap)] if plan.rolled_days else []
    ctes = ""
    if plan.computed_days:
        ctes = f"WITH {session_ctes(day_condition=True, events_after_end=False)} "
        parts.append(_computed_session_day_rows(query, plan, params))
    dimension_aliases, dimension_columns, where = _dimensions_and_filters(query, _rolled, params)
    rows_sql = f"({' UNION ALL '.join(parts)}) u{where}"
    if set(query.metrics) == {"visitors"}:
        # Visitors alone: each (value, visitor) pair once (hashed), then counted per value; a
        # count(DISTINCT) sorts every row of each group instead.
        (alias,) = dimension_aliases
        return (
            f"{ctes}SELECT {alias}, count(*) AS visitors, count(*) OVER () AS total_rows"
            f" FROM (SELECT DISTINCT {dimension_columns[0]}, distinct_id FROM {rows_sql}) g"
            f"{_order_and_page(query, dimension_aliases, params)}"
        ), params
    metric_columns = ", ".join(f"{_SESSION_DAY_METRICS[name]} AS {name}" for name in query.metrics)
    sql = (
        f"{ctes}SELECT {', '.join([*dimension_columns, metric_columns])}, count(*) OVER () AS total_rows"
        f" FROM {rows_sql}{_order_and_page(query, dimension_aliases, params)}"
    )
    return sql, params


def _computed_session_day_rows(
    query: AggregateQuery, plan: SessionDayPlan | ExitItemsPlan | GoalPairsPlan, params: dict[str, Any]
) -> str:
    """The session days' rows computed from the computed days' events (over session_ctes' base),
    each with its session's exit page and visit."""
    (dimension,) = query.dimensions
    params.update(
        start=plan.computed_start,
        end=plan.computed_end,
        timezone=query.timezone,
        computed_days=list(plan.computed_days),
    )
    named = ", ".join(f"{DIMENSIONS[name].raw} AS {name}" for name in VISIT_DIMENSIONS)
    raw_visits = ", ".join(DIMENSIONS[name].raw for name in VISIT_DIMENSIONS)
    raw = DIMENSIONS[dimension].raw
    return (
        f"SELECT distinct_id, exit_page, {named}, {raw} AS {DIMENSIONS[dimension].rolled}, count(*) AS ev,"
        " count(*) FILTER (WHERE name = 'pageview') AS pv FROM base WHERE e_in_range"
        f" GROUP BY distinct_id, exit_page, {raw_visits}, {raw}"
    )


def _exit_items_sql(query: AggregateQuery, plan: ExitItemsPlan) -> tuple[str, dict[str, Any]]:
    """The exit-page items' rows of the rolled days (pages: kind 'p'; event names: 'e', the
    pageviews under 'pageview') and the computed days' sketched from their events, summed."""
    (dimension,) = query.dimensions
    column = DIMENSIONS[dimension].rolled
    params: dict[str, Any] = {
        "project_id": query.project_id,
        "rolled_days": list(plan.rolled_days),
        "kind": "p" if dimension == "page" else "e",
    }
    parts = []
    if plan.rolled_days:
        parts.append(
            f"SELECT exit_page, value AS {column}, visitors, events,"
            " CASE WHEN kind = 'e' AND value = 'pageview' THEN events ELSE 0 END AS pageviews"
            f" FROM {plan.table} WHERE project_id = :project_id AND day = ANY(CAST(:rolled_days AS date[]))"
            " AND kind = :kind"
        )
    sketched = (
        f"hll_add_agg(hll_hash_text(distinct_id), {HLL_LOG2M}) AS visitors, sum(ev) AS events, sum(pv) AS pageviews"
    )
    if plan.session_days:
        params["session_days"] = list(plan.session_days)
        rows = _SESSION_DAY_ROWS[dimension].format(overlap="").replace(":rolled_days", ":session_days")
        parts.append(f"SELECT exit_page, {column}, {sketched} FROM ({rows}) r GROUP BY exit_page, {column}")
    ctes = ""
    if plan.computed_days:
        ctes = f"WITH {session_ctes(day_condition=True, events_after_end=False)} "
        parts.append(
            f"SELECT exit_page, {column}, {sketched} FROM ({_computed_session_day_rows(query, plan, params)}) r"
            f" GROUP BY exit_page, {column}"
        )
    dimension_aliases, dimension_columns, where = _dimensions_and_filters(query, _rolled, params)
    metric_columns = ", ".join(f"{_CUBE_METRICS[name]} AS {name}" for name in query.metrics)
    sql = (
        f"{ctes}SELECT {', '.join([*dimension_columns, metric_columns])}, count(*) OVER () AS total_rows"
        f" FROM ({' UNION ALL '.join(parts)}) u{where}{_order_and_page(query, dimension_aliases, params)}"
    )
    return sql, params


def _goal_pairs_sql(query: AggregateQuery, plan: GoalPairsPlan) -> tuple[str, dict[str, Any]]:
    """The goal pairs' rows of the rolled days and the other days' sketched from their session
    days or events, unioned per page under the query's filters."""
    visits = ", ".join(VISIT_DIMENSIONS)
    listed = next(clause for clause in query.filters if clause.dimension == "page")
    params: dict[str, Any] = {
        "project_id": query.project_id,
        "grain": plan.grain,
        "rolled_days": list(plan.rolled_days),
        "overlap": list(listed.values),
    }
    parts = []
    if plan.rolled_days:
        parts.append(
            f"SELECT page, {visits}, visitors FROM query_rollup_goal_pairs WHERE project_id = :project_id"
            " AND grain = :grain AND page = ANY(CAST(:overlap AS text[])) AND day = ANY(CAST(:rolled_days AS date[]))"
        )
    sketched = f"hll_add_agg(hll_hash_text(distinct_id), {HLL_LOG2M}) AS visitors"
    if plan.session_days:
        params["session_days"] = list(plan.session_days)
        rows = _SESSION_DAY_LISTED_PAGES.replace(":rolled_days", ":session_days")
        parts.append(f"SELECT page, {visits}, {sketched} FROM ({rows}) r GROUP BY page, {visits}")
    ctes = ""
    if plan.computed_days:
        ctes = f"WITH {session_ctes(day_condition=True, events_after_end=False)} "
        parts.append(
            f"SELECT page, {visits}, {sketched} FROM ({_computed_session_day_rows(query, plan, params)}) r"
            f" GROUP BY page, {visits}"
        )
    dimension_aliases, dimension_columns, where = _dimensions_and_filters(query, _rolled, params)
    sql = (
        f"{ctes}SELECT {dimension_columns[0]}, {_CUBE_METRICS['visitors']} AS visitors, count(*) OVER () AS total_rows"
        f" FROM ({' UNION ALL '.join(parts)}) u{where}{_order_and_page(query, dimension_aliases, params)}"
    )
    return sql, params


Plan = CubePlan | SessionDayPlan | ExitItemsPlan | GoalPairsPlan


async def _prepared_sql(
    connection: AsyncConnection, query: AggregateQuery, plan: Plan | None
) -> tuple[str, dict[str, Any]]:
    """The statement that answers the query by this plan, with this transaction set up for it."""
    if plan is None:
        return _raw_sql(query)
    if isinstance(plan, SessionDayPlan):
        return _session_day_sql(query, plan)
    if isinstance(plan, ExitItemsPlan):
        # As for the cubes below: sketches are aggregated one group at a time.
        await connection.execute(text("SET LOCAL enable_hashagg TO off"))
        return _exit_items_sql(query, plan)
    if isinstance(plan, GoalPairsPlan):
        await connection.execute(text("SET LOCAL enable_hashagg TO off"))
        return _goal_pairs_sql(query, plan)
    # A HyperLogLog union's aggregate state is ~130 kB whatever the sketches hold, so a hash
    # aggregate over a few hundred groups spills to disk (measured: 65 MB, 4 batches, 500 ms
    # for top pages of one country); sorting the few thousand rows and aggregating one group
    # at a time does not.
    await connection.execute(text("SET LOCAL enable_hashagg TO off"))
    return _cube_sql(query, plan)


async def _execute(connection: AsyncConnection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    try:
        result = await connection.execute(text(sql), params)
    except sa_exc.DBAPIError as exc:
        # Postgres is the judge of its own regular-expression dialect; Python's `re` is not.
        if exc.orig is not None and isinstance(exc.orig.__cause__, asyncpg.InvalidRegularExpressionError):
            raise InvalidPatternError(str(exc.orig.__cause__)) from exc
        raise
    return [tuple(row) for row in result]


def _number(metric: Metric, value: object) -> float:
    if metric in INTEGER_METRICS:
        return int(value)  # type: ignore[call-overload, no-any-return]
    return float(value) if isinstance(value, Decimal | int | float) else 0.0


async def aggregate(
    connection: AsyncConnection, query: AggregateQuery, plan: Plan | None
) -> tuple[list[AggregateRow], int]:
    """Rows of one page and the number of rows before limit/offset; raw events when plan is None."""
    sql, params = await _prepared_sql(connection, query, plan)
    width = len(query.dimensions)
    raw_rows = await _execute(connection, sql, params)
    if raw_rows:
        rows = [
            AggregateRow(
                dimensions=values[:width],
                metrics=tuple(
                    _number(metric, value) for metric, value in zip(query.metrics, values[width:-1], strict=True)
                ),
            )
            for values in raw_rows
        ]
        return rows, int(raw_rows[0][-1])
    if query.offset > 0:
        # A page past the end has no row to carry count(*) OVER (); ask for the first row instead.
        sql, params = await _prepared_sql(connection, replace(query, limit=1, offset=0), plan)
        first = await _execute(connection, sql, params)
        return [], int(first[0][-1]) if first else 0
    return [], 0


async def explain(connection: AsyncConnection, query: AggregateQuery, plan: Plan | None) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statement `aggregate` runs for this query and plan."""
    sql, params = await _prepared_sql(connection, query, plan)
    result = await connection.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"), params)
    return [row[0] for row in result]


async def realtime(connection: AsyncConnection, project_id: int, since: datetime) -> tuple[int, int]:
    """(visitors, pageviews) of non-bot events from `since` on.

    Grouped by visitor, then counted: a hash of the window's few thousand visitors. The same
    figures as count(DISTINCT distinct_id), which on Postgres 15 sorts every row of the window
    (under the 5000-visitor load, ~900,000 rows: 3.6-4.8 s against 1.6-1.9 s this way on the
    busy machine, docs/benchmarks.md "p95b"). Every open dashboard polls this, and each miss of
    the cache took a Postgres core away from ingest for that long (issue 18 item 3).
    """
    result = await connection.execute(
        text(
            "SELECT count(*), coalesce(sum(pageviews), 0) FROM ("
            "SELECT count(*) FILTER (WHERE name = 'pageview') AS pageviews FROM events"
            " WHERE project_id = :project_id AND occurred_at >= :since AND NOT is_bot"
            " GROUP BY distinct_id) AS visitors"
        ),
        {"project_id": project_id, "since": since},
    )
    visitors, pageviews = result.one()
    return int(visitors), int(pageviews)


@dataclass(frozen=True)
class FunnelStepMatch:
    kind: str  # page | event
    value: str


# The nested visitor samples of the partial index of migration 0780 (1/8 of the visitors, those
# with hashtext(distinct_id) & 7 = 0), as rate -> the condition that selects it among the index's
# rows: 1/2^k of the visitors are those whose hash has its k low bits 0, i.e. whose indexed
# `hashtext(distinct_id) & 511` is a multiple of 2^k (k = 3..9). Every sampled read also names
# the index's own predicate as literal SQL, so the planner can prove the index applies; the
# rate comes from this table, never from a request.
SAMPLE_RATES = (8, 16, 32, 64, 128, 256, 512)
_IN_SAMPLE = "NOT is_bot AND (hashtext(distinct_id) & 7) = 0"
_SAMPLE_CONDITIONS: dict[int, str] = {
    rate: _IN_SAMPLE
    + (
        ""
        if rate == 8
        else f" AND (hashtext(distinct_id) & 511) = ANY('{{{','.join(str(v) for v in range(0, 512, rate))}}}'::int[])"
    )
    for rate in SAMPLE_RATES
}


def _step_condition(step: FunnelStepMatch, alias: str, param: str) -> str:
    if step.kind == "page":
        return f"{alias}.name = 'pageview' AND {alias}.path = :{param}"
    return f"{alias}.name = :{param}"


def _step_events_sql(sample_rate: int) -> str:
    """The range's events that match some step (:step_pages, :step_events): all of them, or
    those of the visitor sample of this rate.

    A sampled read is one range of the sample index per step page and per event name (index-only):
    the pageviews and the custom events are two branches of a UNION ALL rather than one OR. An
    event step named 'pageview' then lists a page step's pageviews twice, which changes no
    count: each step keeps a visitor's earliest match.
    """
    columns = "SELECT distinct_id, occurred_at, name, path FROM events"
    in_range = "project_id = :project_id AND occurred_at >= :start AND occurred_at < :end"
    if sample_rate == 1:
        return (
            f"{columns} WHERE {in_range} AND NOT is_bot"
            " AND ((name = 'pageview' AND path = ANY(CAST(:step_pages AS text[])))"
            " OR name = ANY(CAST(:step_events AS text[])))"
        )
    sample = _SAMPLE_CONDITIONS[sample_rate]
    return (
        f"{columns} WHERE {in_range} AND {sample} AND name = 'pageview' AND path = ANY(CAST(:step_pages AS text[]))"
        f" UNION ALL {columns} WHERE {in_range} AND {sample} AND name = ANY(CAST(:step_events AS text[]))"
    )


def _step_params(project_id: int, steps: Sequence[FunnelStepMatch]) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "step_pages": sorted({step.value for step in steps if step.kind == "page"}),
        "step_events": sorted({step.value for step in steps if step.kind != "page"}),
    }


def _funnel_ctes(
    project_id: int,
    start: datetime,
    end: datetime,
    steps: Sequence[FunnelStepMatch],
    window_seconds: int,
    sample_rate: int,
) -> tuple[list[str], dict[str, Any]]:
    """The funnel's CTEs s0 .. s{n-1} (the visitors reaching each step, one row each) and their params."""
    params = {**_step_params(project_id, steps), "start": start, "end": end, "window": window_seconds}
    # Only events that match some step can be reached: the steps' joins read those alone.
    ctes = [
        f"ev AS MATERIALIZED ({_step_events_sql(sample_rate)})",
        "s0 AS (SELECT distinct_id, min(occurred_at) AS reached_at, min(occurred_at) AS started_at"
        f" FROM ev e WHERE {_step_condition(steps[0], 'e', 'step0')} GROUP BY distinct_id)",
    ]
    params["step0"] = steps[0].value
    for index, step in enumerate(steps[1:], start=1):
        params[f"step{index}"] = step.value
        ctes.append(
            f"s{index} AS (SELECT p.distinct_id, min(e.occurred_at) AS reached_at, p.started_at"
            f" FROM s{index - 1} p JOIN ev e ON e.distinct_id = p.distinct_id AND e.occurred_at > p.reached_at"
            " AND e.occurred_at <= p.started_at + make_interval(secs => :window)"
            f" AND {_step_condition(step, 'e', f'step{index}')}"
            " GROUP BY p.distinct_id, p.started_at)"
        )
    return ctes, params


async def funnel(
    connection: AsyncConnection,
    project_id: int,
    start: datetime,
    end: datetime,
    steps: Sequence[FunnelStepMatch],
    window_seconds: int,
    sample_rate: int = 1,
) -> list[int]:
    """Visitors reaching each step, in order, within the window after their first step-1 event.

    For a fixed start, taking the earliest qualifying event for each next step is optimal:
    any later choice leaves less room for the steps after it. With a sample_rate of SAMPLE_RATES,
    only the visitors of that sample are followed, and their counts are returned as they are
    (not scaled up).
    """
    ctes, params = _funnel_ctes(project_id, start, end, steps, window_seconds, sample_rate)
    counts = ", ".join(f"(SELECT count(*) FROM s{index})" for index in range(len(steps)))
    result = await connection.execute(text(f"WITH {', '.join(ctes)} SELECT {counts}"), params)
    return [int(value) for value in result.one()]


async def funnel_hash_classes(
    connection: AsyncConnection,
    project_id: int,
    start: datetime,
    end: datetime,
    steps: Sequence[FunnelStepMatch],
    window_seconds: int,
) -> list[list[int]]:
    """The exact funnel's visitors per step, split by the sample hash's low nine bits
    (`hashtext(distinct_id) & 511`, 512 counts per step). Every sample of rate r <= 512 is a
    union of these classes (those that are multiples of r), and so is each of its r - 1 equally
    likely siblings (the classes congruent to c mod r): the bench's check of the stated interval
    over many disjoint samples of the same funnel."""
    ctes, params = _funnel_ctes(project_id, start, end, steps, window_seconds, 1)
    branches = " UNION ALL ".join(
        f"SELECT {index} AS step, hashtext(distinct_id) & 511 AS class FROM s{index}" for index in range(len(steps))
    )
    result = await connection.execute(
        text(f"WITH {', '.join(ctes)} SELECT step, class, count(*) FROM ({branches}) AS reached GROUP BY step, class"),
        params,
    )
    classes = [[0] * 512 for _ in steps]
    for step, hash_class, count in result:
        classes[int(step)][int(hash_class)] = int(count)
    return classes


@dataclass(frozen=True)
class FunnelVolume:
    """How many events a funnel would read: all non-bot events of the range, and those matching a step."""

    events: int
    step_events: int


async def funnel_volume_from_rollups(
    connection: AsyncConnection, project_id: int, days: Sequence[date], steps: Sequence[FunnelStepMatch]
) -> FunnelVolume:
    """The volume of these rolled-up days, from the daily rollup rows of the grain without visit
    dimensions: events from the visits cube, step pageviews from the pages cube, step events
    from the event-names cube (each a few rows per day)."""
    params = {**_step_params(project_id, steps), "days": list(days), "grain": grain_id(frozenset())}
    result = await connection.execute(
        text(
            "SELECT (SELECT coalesce(sum(events), 0) FROM query_rollup_visits"
            " WHERE project_id = :project_id AND grain = :grain AND day = ANY(CAST(:days AS date[]))),"
            " (SELECT coalesce(sum(pageviews), 0) FROM query_rollup_pages"
            " WHERE project_id = :project_id AND grain = :grain AND day = ANY(CAST(:days AS date[]))"
            " AND page = ANY(CAST(:step_pages AS text[]))),"
            " (SELECT coalesce(sum(events), 0) FROM query_rollup_event_names"
            " WHERE project_id = :project_id AND grain = :grain AND day = ANY(CAST(:days AS date[]))"
            " AND event_name = ANY(CAST(:step_events AS text[])))"
        ),
        params,
    )
    events, step_pageviews, step_custom_events = result.one()
    return FunnelVolume(int(events), int(step_pageviews) + int(step_custom_events))


async def funnel_volume_from_sample(
    connection: AsyncConnection,
    project_id: int,
    start: datetime,
    end: datetime,
    steps: Sequence[FunnelStepMatch],
    sample_rate: int,
) -> FunnelVolume:
    """The volume of [start, end) estimated from the visitor sample of this rate, scaled up by it
    (for days the rollups do not hold yet): one index-only pass over the sample's rows there."""
    sample = _SAMPLE_CONDITIONS[sample_rate]
    result = await connection.execute(
        text(
            "SELECT count(*), count(*) FILTER (WHERE (name = 'pageview' AND path = ANY(CAST(:step_pages AS text[])))"
            " OR name = ANY(CAST(:step_events AS text[]))) FROM events"
            f" WHERE project_id = :project_id AND occurred_at >= :start AND occurred_at < :end AND {sample}"
        ),
        {**_step_params(project_id, steps), "start": start, "end": end},
    )
    events, step_events = result.one()
    return FunnelVolume(int(events) * sample_rate, int(step_events) * sample_rate)


@dataclass(frozen=True)
class RetentionCell:
    cohort_week: date
    week_offset: int
    visitors: int


async def retention(
    connection: AsyncConnection, project_id: int, timezone: str, start: datetime, end: datetime, weeks: int
) -> list[RetentionCell]:
    """Visitors first seen (ever) inside [start, end), by first-seen week, active in each later week.

    Read from the sessions (a visitor is seen when a session of theirs starts, and active in the
    week it starts in, as every session figure is), a quarter of the rows of the events.
    """
    result = await connection.execute(
        text(
            "WITH firsts AS ("
            " SELECT distinct_id, min(started_at) AS first_seen FROM query_sessions"
            " WHERE project_id = :project_id AND started_at < :end GROUP BY distinct_id),"
            " cohort AS ("
            " SELECT distinct_id, date_trunc('week', first_seen AT TIME ZONE :timezone)::date AS cohort_week"
            " FROM firsts WHERE first_seen >= :start),"
            " activity AS ("
            " SELECT DISTINCT distinct_id, date_trunc('week', started_at AT TIME ZONE :timezone)::date AS week"
            " FROM query_sessions WHERE project_id = :project_id AND started_at >= :start AND started_at < :end)"
            " SELECT c.cohort_week, (a.week - c.cohort_week) / 7 AS week_offset, count(*) AS visitors"
            " FROM cohort c JOIN activity a USING (distinct_id)"
            " WHERE a.week >= c.cohort_week AND (a.week - c.cohort_week) / 7 <= :weeks"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        ),
        {"project_id": project_id, "timezone": timezone, "start": start, "end": end, "weeks": weeks},
    )
    return [RetentionCell(row.cohort_week, int(row.week_offset), int(row.visitors)) for row in result]


async def retention_from_rollups(
    connection: AsyncConnection, project_id: int, date_from: date, date_to: date, weeks: int
) -> list[RetentionCell]:
    """The cells of `retention` from query_rollup_retention (migration 0720) over local days
    [date_from, date_to]: visitors first seen on a day of the range, counted in each week where
    their first session of the week began by date_to. Every first-seen day of the range is at or
    after date_from, and so is each later activity: both bounds apply to both days."""
    cohort_week = "(first_day - (extract(isodow FROM first_day)::int - 1))"
    active_week = "(active_day - (extract(isodow FROM active_day)::int - 1))"
    result = await connection.execute(
        text(
            f"SELECT cohort_week, week_offset, sum(visitors) AS visitors FROM (SELECT {cohort_week} AS cohort_week,"
            f" ({active_week} - {cohort_week}) / 7 AS week_offset, visitors FROM query_rollup_retention"
            " WHERE project_id = :project_id AND active_day BETWEEN :date_from AND :date_to"
            " AND first_day BETWEEN :date_from AND :date_to) cells"
            " WHERE week_offset <= :weeks GROUP BY 1, 2 ORDER BY 1, 2"
        ),
        {"project_id": project_id, "date_from": date_from, "date_to": date_to, "weeks": weeks},
    )
    return [RetentionCell(row.cohort_week, int(row.week_offset), int(row.visitors)) for row in result]
