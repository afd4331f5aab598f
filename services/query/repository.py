"""All SQL of the query service's reads. Callers own the transaction.

Statements are assembled only from the whitelists below (column names, metric expressions,
time-bucket expressions keyed by the API's own names) and bind parameters; no value from a
request is ever spliced into SQL text.

Two ways to answer an aggregate query, with the same semantics:
- raw: from the range's events (exact);
- cube: from the per-day rollups (services/query/rollup_repository.py) for days whose rollup is
  current, plus the same cube computed on the fly from events for the other days. Unique
  visitors there are HyperLogLog unions (approximate); every other metric is exact.

Semantics shared by both: a session is a session_id's non-bot events within one local day of
the project's timezone (a visit crossing midnight counts as two, as in Google Analytics); the
visit dimensions (referrer, UTM tags, country, browser, OS, device, entry and exit page) are
the session's first event's (or first/last pageview's), so a later internal pageview keeps the
visit's source; a session belongs to one visitor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# One precision for every sketch: unions of sketches with different parameters are refused.
HLL_LOG2M = 12
# HyperLogLog's relative standard error is 1.04 / sqrt(2^log2m).
HLL_RELATIVE_STANDARD_ERROR = 1.04 / (2**HLL_LOG2M) ** 0.5


async def configure_transaction(connection: AsyncConnection, *, read_only: bool) -> None:
    """Settings for the current transaction only (SET LOCAL semantics, safe under PgBouncer).

    The per-session CTE's row estimate is Postgres's default of 200 whatever the range holds,
    which makes the planner join it to the events with a nested loop: quadratic, minutes on a
    busy day. A hash join is right for every statement here.
    """
    if read_only:
        # Must come first in the transaction; a query can then never write, whatever it says.
        await connection.execute(text("SET TRANSACTION READ ONLY"))
    await connection.execute(text("SELECT set_config('enable_nestloop', 'off', true)"))


def events_cte(extra_condition: str = "") -> str:
    """`ev`: the non-bot events of [:start, :end) with their local day."""
    return (
        "ev AS (SELECT occurred_at, event_uuid, name, distinct_id, session_id, path, domain, referrer_domain,"
        " utm_source, utm_medium, utm_campaign, country, browser, os, device_type,"
        " (occurred_at AT TIME ZONE :timezone)::date AS day"
        " FROM events WHERE project_id = :project_id AND occurred_at >= :start AND occurred_at < :end"
        f" AND NOT is_bot{extra_condition})"
    )


# `sess`: one row per session and local day, with the visit's attributes. The first event's
# attributes come from one ordered array of arrays (one sort per session instead of one per
# attribute), unpacked by the outer SELECT.
_VISIT_SOURCE_COLUMNS = (
    ("referrer_domain", "v_referrer"),
    ("utm_source", "v_utm_source"),
    ("utm_medium", "v_utm_medium"),
    ("utm_campaign", "v_utm_campaign"),
    ("country", "v_country"),
    ("browser", "v_browser"),
    ("os", "v_os"),
    ("device_type", "v_device"),
)
SESSIONS_CTE = (
    "sess AS (SELECT session_id, day, s_visitor, s_duration, s_pageviews, s_events, entry_page, exit_page, "
    + ", ".join(f"first_event[1][{index}] AS {alias}" for index, (_, alias) in enumerate(_VISIT_SOURCE_COLUMNS, 1))
    + " FROM (SELECT session_id, day, min(distinct_id) AS s_visitor,"
    " extract(epoch FROM max(occurred_at) - min(occurred_at))::float8 AS s_duration,"
    " count(*) FILTER (WHERE name = 'pageview') AS s_pageviews,"
    " count(*) AS s_events,"
    " (array_agg(path ORDER BY occurred_at, event_uuid) FILTER (WHERE name = 'pageview'))[1] AS entry_page,"
    " (array_agg(path ORDER BY occurred_at DESC, event_uuid DESC) FILTER (WHERE name = 'pageview'))[1]"
    " AS exit_page,"
    " array_agg(ARRAY["
    + ", ".join(column for column, _ in _VISIT_SOURCE_COLUMNS)
    + "] ORDER BY occurred_at, event_uuid) AS first_event"
    " FROM ev GROUP BY session_id, day) grouped)"
)

# A session's bounce: a single pageview and nothing else.
_BOUNCE = "s_pageviews = 1 AND s_events = 1"

# Visit dimensions, in the order of the `grain` bit mask (GROUPING() puts the first argument in
# the highest bit, and sets the bits of the dimensions a row is *not* grouped by).
VISIT_DIMENSIONS = ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")
_VISIT_COLUMNS = {name: f"v_{name}" for name in VISIT_DIMENSIONS}
CUBE_METRIC_COLUMNS = "visitors, sessions, bounces, duration_s, pageviews, events, session_pageviews"


def grain_id(dimensions: frozenset[str]) -> int:
    """The `grain` of rows grouped by these visit dimensions (as GROUPING() computes it)."""
    width = len(VISIT_DIMENSIONS)
    return sum(1 << (width - 1 - index) for index, name in enumerate(VISIT_DIMENSIONS) if name not in dimensions)


@dataclass(frozen=True)
class Cube:
    """A rollup table: rows per day and grain; `fixed` dimensions are in every grain.

    `weekly_table`, if any, holds the same rows pre-unioned per complete week (Monday first).
    """

    table: str
    fixed: tuple[str, ...]
    grains: tuple[frozenset[str], ...]
    weekly_table: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.fixed, *VISIT_DIMENSIONS)

    def grain_for(self, dimensions: set[str]) -> frozenset[str] | None:
        """The smallest stored grain that holds these dimensions."""
        wanted = dimensions - set(self.fixed)
        candidates = [grain for grain in self.grains if wanted <= grain]
        return min(candidates, key=len) if candidates else None

    def select_sql(self, grains: tuple[frozenset[str], ...]) -> str:
        """The cube's rows for these grains, computed from `ev` and `sess` (rollup build and tail)."""
        sets = ", ".join(
            "(" + ", ".join(f"s.{_VISIT_COLUMNS[name]}" for name in VISIT_DIMENSIONS if name in grain) + ")"
            for grain in grains
        )
        grouped = frozenset().union(*grains)
        # Columns in no grouping set cannot be selected; they are NULL in every row anyway.
        visit_columns = ", ".join(
            f"s.{_VISIT_COLUMNS[name]} AS {name}" if name in grouped else f"NULL::text AS {name}"
            for name in VISIT_DIMENSIONS
        )
        if len(grains) == 1:
            grain = str(grain_id(grains[0]))
        else:
            # GROUPING() takes only grouped columns; every build lists all of them somewhere.
            if grouped != frozenset(VISIT_DIMENSIONS):
                raise ValueError("a multi-grain rollup build must group by every visit dimension")
            grain = "GROUPING(" + ", ".join(f"s.{_VISIT_COLUMNS[name]}" for name in VISIT_DIMENSIONS) + ")"
        metrics = (
            f"hll_add_agg(hll_hash_text(s.s_visitor), {HLL_LOG2M}) AS visitors, count(*) AS sessions,"
            f" count(*) FILTER (WHERE {_BOUNCE}) AS bounces, sum(s.s_duration) AS duration_s"
        )
        if not self.fixed:
            return (
                f"SELECT s.day, {grain} AS grain, {visit_columns}, {metrics},"
                " sum(s.s_pageviews) AS pageviews, sum(s.s_events) AS events, sum(s.s_pageviews) AS session_pageviews"
                f" FROM sess s GROUP BY s.day, GROUPING SETS ({sets})"
            )
        # Pages: one row per (day, page, session) first, so a session counts once per page.
        return (
            f"SELECT s.day, {grain} AS grain, ps.path AS page, {visit_columns}, {metrics},"
            " sum(ps.pageviews) AS pageviews, sum(ps.events) AS events, sum(s.s_pageviews) AS session_pageviews"
            " FROM (SELECT day, path, session_id, count(*) FILTER (WHERE name = 'pageview') AS pageviews,"
            " count(*) AS events FROM ev GROUP BY day, path, session_id) ps"
            " JOIN sess s ON s.session_id = ps.session_id AND s.day = ps.day"
            f" GROUP BY s.day, ps.path, GROUPING SETS ({sets})"
        )


def _grains_up_to_pairs(extra: tuple[frozenset[str], ...] = ()) -> tuple[frozenset[str], ...]:
    singles = [frozenset({name}) for name in VISIT_DIMENSIONS]
    pairs = [
        frozenset({first, second})
        for index, first in enumerate(VISIT_DIMENSIONS)
        for second in VISIT_DIMENSIONS[index + 1 :]
    ]
    return (frozenset(), *singles, *pairs, *extra)


# Visits: totals, each visit dimension, each pair (one filter plus one breakdown), and the full
# cube for anything with more dimensions. Pages: each page alone and with one visit dimension.
VISITS_CUBE = Cube("query_rollup_visits", (), _grains_up_to_pairs((frozenset(VISIT_DIMENSIONS),)))
# Only pages have weekly rows: a page query unions a sketch per page and day, hundreds of
# pages times thirty days, where a visits query unions thirty.
PAGES_CUBE = Cube(
    "query_rollup_pages",
    ("page",),
    (frozenset(), *(frozenset({name}) for name in VISIT_DIMENSIONS)),
    weekly_table="query_rollup_page_weeks",
)
CUBES = (VISITS_CUBE, PAGES_CUBE)


# API dimension -> column of the raw query's `ev` joined with `sess`.
_RAW_COLUMNS: dict[str, str] = {
    "page": "path",
    "domain": "domain",
    "referrer": "v_referrer",
    "utm_source": "v_utm_source",
    "utm_medium": "v_utm_medium",
    "utm_campaign": "v_utm_campaign",
    "country": "v_country",
    "browser": "v_browser",
    "os": "v_os",
    "device": "v_device",
    "event_name": "name",
    "entry_page": "entry_page",
    "exit_page": "exit_page",
}

# Buckets are rendered as text that sorts in time order, in the project's timezone; ISO weeks
# start on Monday.
_RAW_TIME_BUCKETS: dict[str, str] = {
    "time:hour": "to_char(date_trunc('hour', occurred_at AT TIME ZONE :timezone), 'YYYY-MM-DD\"T\"HH24:00')",
    "time:day": "to_char(day, 'YYYY-MM-DD')",
    "time:week": "to_char(date_trunc('week', day), 'YYYY-MM-DD')",
    "time:month": "to_char(day, 'YYYY-MM')",
}
CUBE_TIME_DIMENSIONS = frozenset({"time:day", "time:week", "time:month"})

# Raw: session metrics look at each (group, session) pair once: `session_first` marks one row
# per pair, and s_* carry the whole session's figures.
_RAW_METRICS: dict[str, str] = {
    "visitors": "count(DISTINCT distinct_id)",
    "pageviews": "count(*) FILTER (WHERE name = 'pageview')",
    "events": "count(*)",
    "sessions": "count(*) FILTER (WHERE session_first)",
    "bounce_rate": (
        f"coalesce(round(100.0 * count(*) FILTER (WHERE session_first AND {_BOUNCE})"
        " / nullif(count(*) FILTER (WHERE session_first), 0), 2), 0)"
    ),
    "visit_duration": (
        "coalesce(round((sum(s_duration) FILTER (WHERE session_first)"
        " / nullif(count(*) FILTER (WHERE session_first), 0))::numeric, 2), 0)"
    ),
    "views_per_session": (
        "coalesce(round(sum(s_pageviews) FILTER (WHERE session_first)::numeric"
        " / nullif(count(*) FILTER (WHERE session_first), 0), 2), 0)"
    ),
}
_CUBE_METRICS: dict[str, str] = {
    "visitors": "coalesce(round(hll_cardinality(hll_union_agg(visitors)))::bigint, 0)",
    "pageviews": "coalesce(sum(pageviews), 0)::bigint",
    "events": "coalesce(sum(events), 0)::bigint",
    "sessions": "coalesce(sum(sessions), 0)::bigint",
    "bounce_rate": "coalesce(round(100.0 * sum(bounces) / nullif(sum(sessions), 0), 2), 0)",
    "visit_duration": "coalesce(round((sum(duration_s) / nullif(sum(sessions), 0))::numeric, 2), 0)",
    "views_per_session": "coalesce(round(sum(session_pageviews)::numeric / nullif(sum(sessions), 0), 2), 0)",
}
SESSION_METRICS = frozenset({"sessions", "bounce_rate", "visit_duration", "views_per_session"})
INTEGER_METRICS = frozenset({"visitors", "pageviews", "events", "sessions"})


class InvalidPatternError(ValueError):
    """A 'matches' filter held a pattern that Postgres cannot compile."""


@dataclass(frozen=True)
class FilterClause:
    dimension: str
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
    metrics: tuple[str, ...]
    dimensions: tuple[str, ...]
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
class AggregateRow:
    dimensions: tuple[str | None, ...]
    metrics: tuple[Any, ...]


def cube_for(query: AggregateQuery) -> tuple[Cube, frozenset[str]] | None:
    """The cube and grain that answer this query with the raw path's semantics, if any."""
    plain_dimensions = [name for name in query.dimensions if not name.startswith("time:")]
    if any(name.startswith("time:") and name not in CUBE_TIME_DIMENSIONS for name in query.dimensions):
        return None
    used = {*plain_dimensions, *(clause.dimension for clause in query.filters)}
    for cube in CUBES:
        if not used <= set(cube.columns) or not set(cube.fixed) <= used:
            continue
        if cube is PAGES_CUBE and SESSION_METRICS.intersection(query.metrics) and "page" not in plain_dimensions:
            # Page rows count a session once per page; summing several pages' rows would count a
            # session that saw two of them twice. Only one exact page keeps that sum exact.
            page_filters = [clause for clause in query.filters if clause.dimension == "page"]
            if not any(
                clause.operator == "is" and len(clause.values) == 1 and not clause.includes_null
                for clause in page_filters
            ):
                continue
        grain = cube.grain_for(used)
        if grain is not None:
            return cube, grain
    return None


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
    alias_of = dict(zip(query.dimensions, dimension_aliases, strict=True))
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


def build_raw_sql(query: AggregateQuery) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {
        "project_id": query.project_id,
        "start": query.start,
        "end": query.end,
        "timezone": query.timezone,
    }
    dimension_aliases = [f"d{index}" for index in range(len(query.dimensions))]
    dimension_columns = "".join(
        f", {_RAW_TIME_BUCKETS.get(name) or _RAW_COLUMNS[name]} AS {alias}"
        for name, alias in zip(query.dimensions, dimension_aliases, strict=True)
    )
    conditions = [
        _filter_sql(clause, _RAW_COLUMNS[clause.dimension], f"f{index}", params)
        for index, clause in enumerate(query.filters)
    ]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    partition = ", ".join([*dimension_aliases, "session_id", "day"])
    metric_columns = ", ".join(f"{_RAW_METRICS[name]} AS {name}" for name in query.metrics)
    sql = (
        f"WITH {events_cte()}, {SESSIONS_CTE},"
        " m AS (SELECT distinct_id, session_id, day, name, s_duration, s_pageviews, s_events"
        f"{dimension_columns} FROM ev JOIN sess USING (session_id, day){where}),"
        f" g AS (SELECT *, row_number() OVER (PARTITION BY {partition}) = 1 AS session_first FROM m)"
        f" SELECT {', '.join([*dimension_aliases, metric_columns])}, count(*) OVER () AS total_rows FROM g"
        f"{_order_and_page(query, dimension_aliases, params)}"
    )
    return sql, params


def build_cube_sql(query: AggregateQuery, plan: CubePlan) -> tuple[str, dict[str, Any]]:
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
        day_condition = " AND (occurred_at AT TIME ZONE :timezone)::date = ANY(CAST(:computed_days AS date[]))"
        ctes = f"{events_cte(day_condition)}, {SESSIONS_CTE}, "
        parts.append(f"SELECT {columns}, {CUBE_METRIC_COLUMNS} FROM ({cube.select_sql((plan.grain,))}) computed")
    dimension_aliases = [f"d{index}" for index in range(len(query.dimensions))]
    time_buckets = {
        "time:day": "to_char(day, 'YYYY-MM-DD')",
        "time:week": "to_char(date_trunc('week', day), 'YYYY-MM-DD')",
        "time:month": "to_char(day, 'YYYY-MM')",
    }
    dimension_columns = [
        f"{time_buckets.get(name, name)} AS {alias}"
        for name, alias in zip(query.dimensions, dimension_aliases, strict=True)
    ]
    conditions = [
        _filter_sql(clause, clause.dimension, f"f{index}", params) for index, clause in enumerate(query.filters)
    ]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    metric_columns = ", ".join(f"{_CUBE_METRICS[name]} AS {name}" for name in query.metrics)
    sql = (
        f"WITH {ctes}cube AS ({' UNION ALL '.join(parts)})"
        f" SELECT {', '.join([*dimension_columns, metric_columns])}, count(*) OVER () AS total_rows"
        f" FROM cube{where}{_order_and_page(query, dimension_aliases, params)}"
    )
    return sql, params


async def _execute(connection: AsyncConnection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    try:
        result = await connection.execute(text(sql), params)
    except sa_exc.DBAPIError as exc:
        # Postgres is the judge of its own regular-expression dialect; Python's `re` is not.
        if exc.orig is not None and isinstance(exc.orig.__cause__, asyncpg.InvalidRegularExpressionError):
            raise InvalidPatternError(str(exc.orig.__cause__)) from exc
        raise
    return [tuple(row) for row in result]


async def aggregate(
    connection: AsyncConnection, query: AggregateQuery, plan: CubePlan | None
) -> tuple[list[AggregateRow], int]:
    """Rows of one page and the number of rows before limit/offset."""
    sql, params = build_raw_sql(query) if plan is None else build_cube_sql(query, plan)
    if plan is not None:
        # A HyperLogLog union's aggregate state is ~130 kB whatever the sketches hold, so a hash
        # aggregate over a few hundred groups spills to disk (measured: 65 MB, 4 batches, 500 ms
        # for top pages of one country); sorting the few thousand rows and aggregating one group
        # at a time does not.
        await connection.execute(text("SELECT set_config('enable_hashagg', 'off', true)"))
    width = len(query.dimensions)
    raw_rows = await _execute(connection, sql, params)
    if raw_rows:
        rows = [AggregateRow(dimensions=values[:width], metrics=values[width:-1]) for values in raw_rows]
        return rows, int(raw_rows[0][-1])
    if query.offset > 0:
        # A page past the end has no row to carry count(*) OVER (); ask for the first row instead.
        first_page = replace(query, limit=1, offset=0)
        sql, params = build_raw_sql(first_page) if plan is None else build_cube_sql(first_page, plan)
        first = await _execute(connection, sql, params)
        return [], int(first[0][-1]) if first else 0
    return [], 0


async def realtime(connection: AsyncConnection, project_id: int, since: datetime) -> tuple[int, int]:
    """(visitors, pageviews) of non-bot events from `since` on."""
    result = await connection.execute(
        text(
            "SELECT count(DISTINCT distinct_id), count(*) FILTER (WHERE name = 'pageview') FROM events"
            " WHERE project_id = :project_id AND occurred_at >= :since AND NOT is_bot"
        ),
        {"project_id": project_id, "since": since},
    )
    visitors, pageviews = result.one()
    return int(visitors), int(pageviews)


@dataclass(frozen=True)
class FunnelStepMatch:
    kind: str  # page | event
    value: str


def _step_condition(step: FunnelStepMatch, alias: str, param: str) -> str:
    if step.kind == "page":
        return f"{alias}.name = 'pageview' AND {alias}.path = :{param}"
    return f"{alias}.name = :{param}"


async def funnel(
    connection: AsyncConnection,
    *,
    project_id: int,
    start: datetime,
    end: datetime,
    steps: Sequence[FunnelStepMatch],
    window_seconds: int,
) -> list[int]:
    """Visitors reaching each step, in order, within the window after their first step-1 event.

    For a fixed start, taking the earliest qualifying event for each next step is optimal:
    any later choice leaves less room for the steps after it.
    """
    params: dict[str, Any] = {"project_id": project_id, "start": start, "end": end, "window": window_seconds}
    ctes = [
        "ev AS (SELECT distinct_id, occurred_at, name, path FROM events"
        " WHERE project_id = :project_id AND occurred_at >= :start AND occurred_at < :end AND NOT is_bot)",
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
    counts = ", ".join(f"(SELECT count(*) FROM s{index})" for index in range(len(steps)))
    result = await connection.execute(text(f"WITH {', '.join(ctes)} SELECT {counts}"), params)
    return [int(value) for value in result.one()]


@dataclass(frozen=True)
class RetentionCell:
    cohort_week: date
    week_offset: int
    visitors: int


async def retention(
    connection: AsyncConnection, *, project_id: int, timezone: str, start: datetime, end: datetime, weeks: int
) -> list[RetentionCell]:
    """Visitors first seen (ever) inside [start, end), by first-seen week, active in each later week."""
    result = await connection.execute(
        text(
            "WITH firsts AS ("
            " SELECT distinct_id, min(occurred_at) AS first_seen FROM events"
            " WHERE project_id = :project_id AND occurred_at < :end AND NOT is_bot GROUP BY distinct_id),"
            " cohort AS ("
            " SELECT distinct_id, date_trunc('week', first_seen AT TIME ZONE :timezone)::date AS cohort_week"
            " FROM firsts WHERE first_seen >= :start),"
            " activity AS ("
            " SELECT DISTINCT distinct_id, date_trunc('week', occurred_at AT TIME ZONE :timezone)::date AS week"
            " FROM events WHERE project_id = :project_id AND occurred_at >= :start AND occurred_at < :end"
            " AND NOT is_bot)"
            " SELECT c.cohort_week, (a.week - c.cohort_week) / 7 AS week_offset, count(*) AS visitors"
            " FROM cohort c JOIN activity a USING (distinct_id)"
            " WHERE a.week >= c.cohort_week AND (a.week - c.cohort_week) / 7 <= :weeks"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        ),
        {"project_id": project_id, "timezone": timezone, "start": start, "end": end, "weeks": weeks},
    )
    return [RetentionCell(row.cohort_week, int(row.week_offset), int(row.visitors)) for row in result]
