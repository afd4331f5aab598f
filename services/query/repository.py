"""All SQL of the query service. Callers own the transaction.

Statements are assembled only from the whitelists below (column names, metric expressions,
time-bucket expressions keyed by the API's own names) and bind parameters; no value from a
request is ever spliced into SQL text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# API dimension -> column of the `ev` CTE (the range's non-bot events) or of the `sess` CTE
# (one row per session). Where a visit came from is a property of the session, taken from its
# first event: later pageviews of the same visit carry an internal (NULL) referrer and no UTM tags.
_DIMENSION_COLUMNS: dict[str, str] = {
    "page": "path",
    "domain": "domain",
    "referrer": "entry_referrer",
    "utm_source": "entry_utm_source",
    "utm_medium": "entry_utm_medium",
    "utm_campaign": "entry_utm_campaign",
    "country": "country",
    "browser": "browser",
    "os": "os",
    "device": "device_type",
    "event_name": "name",
    "entry_page": "entry_page",
    "exit_page": "exit_page",
}
_SESSION_DIMENSIONS = frozenset({"entry_page", "exit_page", "referrer", "utm_source", "utm_medium", "utm_campaign"})

# Buckets are rendered as text that sorts in time order, in the project's timezone
# (:timezone); ISO weeks start on Monday.
_TIME_BUCKETS: dict[str, str] = {
    "time:hour": "to_char(date_trunc('hour', occurred_at AT TIME ZONE :timezone), 'YYYY-MM-DD\"T\"HH24:00')",
    "time:day": "to_char(date_trunc('day', occurred_at AT TIME ZONE :timezone), 'YYYY-MM-DD')",
    "time:week": "to_char(date_trunc('week', occurred_at AT TIME ZONE :timezone), 'YYYY-MM-DD')",
    "time:month": "to_char(date_trunc('month', occurred_at AT TIME ZONE :timezone), 'YYYY-MM')",
}

# Session metrics look at each (group, session) pair once: `session_first` marks one row per
# pair, and s_* carry the whole session's figures within the date range.
_METRICS: dict[str, str] = {
    "visitors": "count(DISTINCT distinct_id)",
    "pageviews": "count(*) FILTER (WHERE name = 'pageview')",
    "events": "count(*)",
    "sessions": "count(*) FILTER (WHERE session_first)",
    "bounce_rate": (
        "coalesce(round(100.0 * count(*) FILTER (WHERE session_first AND s_pageviews = 1 AND s_events = 1)"
        " / nullif(count(*) FILTER (WHERE session_first), 0), 2), 0)"
    ),
    "visit_duration": "coalesce(round(avg(s_duration) FILTER (WHERE session_first), 2), 0)",
    "views_per_session": (
        "coalesce(round(sum(s_pageviews) FILTER (WHERE session_first)::numeric"
        " / nullif(count(*) FILTER (WHERE session_first), 0), 2), 0)"
    ),
}
SESSION_METRICS = frozenset({"sessions", "bounce_rate", "visit_duration", "views_per_session"})
INTEGER_METRICS = frozenset({"visitors", "pageviews", "events", "sessions"})

_EVENT_COLUMNS = (
    "occurred_at, event_uuid, name, distinct_id, session_id, path, domain, referrer_domain,"
    " utm_source, utm_medium, utm_campaign, country, browser, os, device_type"
)


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
class AggregateRow:
    dimensions: tuple[str | None, ...]
    metrics: tuple[Any, ...]


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filter_sql(clause: FilterClause, param: str, params: dict[str, Any]) -> str:
    column = _DIMENSION_COLUMNS[clause.dimension]
    if clause.operator in ("is", "is_not"):
        params[param] = list(clause.values)
        # `= ANY` of an empty array is false, never NULL, so the NOT below is safe.
        equal = f"coalesce({column} = ANY(CAST(:{param} AS text[])), false)"
        if clause.includes_null:
            equal = f"({equal} OR {column} IS NULL)"
        return equal if clause.operator == "is" else f"NOT {equal}"
    if clause.operator == "contains":
        params[param] = [_like_pattern(value) for value in clause.values]
        return f"coalesce({column} ILIKE ANY(CAST(:{param} AS text[])), false)"
    if clause.operator == "matches":
        params[param] = list(clause.values)
        return f"coalesce({column} ~ ANY(CAST(:{param} AS text[])), false)"
    raise ValueError(f"unknown operator {clause.operator}")


def _dimension_sql(dimension: str) -> str:
    return _TIME_BUCKETS.get(dimension) or _DIMENSION_COLUMNS[dimension]


def build_aggregate_sql(query: AggregateQuery) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {
        "project_id": query.project_id,
        "start": query.start,
        "end": query.end,
        "timezone": query.timezone,
    }
    needs_sessions = bool(SESSION_METRICS.intersection(query.metrics)) or any(
        name in _SESSION_DIMENSIONS for name in (*query.dimensions, *(f.dimension for f in query.filters))
    )
    ctes = [
        f"ev AS (SELECT {_EVENT_COLUMNS} FROM events"
        " WHERE project_id = :project_id AND occurred_at >= :start AND occurred_at < :end AND NOT is_bot)"
    ]
    source = "ev"
    session_columns = ""
    if needs_sessions:
        # A session is the range's events with one session_id: the date range clips sessions
        # that cross its edges, so every figure is computed from events inside the range.
        ctes.append(
            "sess AS (SELECT session_id,"
            " extract(epoch FROM max(occurred_at) - min(occurred_at)) AS s_duration,"
            " count(*) FILTER (WHERE name = 'pageview') AS s_pageviews,"
            " count(*) AS s_events,"
            " (array_agg(path ORDER BY occurred_at, event_uuid) FILTER (WHERE name = 'pageview'))[1] AS entry_page,"
            " (array_agg(path ORDER BY occurred_at DESC, event_uuid DESC) FILTER (WHERE name = 'pageview'))[1]"
            " AS exit_page,"
            " (array_agg(referrer_domain ORDER BY occurred_at, event_uuid))[1] AS entry_referrer,"
            " (array_agg(utm_source ORDER BY occurred_at, event_uuid))[1] AS entry_utm_source,"
            " (array_agg(utm_medium ORDER BY occurred_at, event_uuid))[1] AS entry_utm_medium,"
            " (array_agg(utm_campaign ORDER BY occurred_at, event_uuid))[1] AS entry_utm_campaign"
            " FROM ev GROUP BY session_id)"
        )
        source = "ev JOIN sess USING (session_id)"
        session_columns = ", s_duration, s_pageviews, s_events"

    dimension_aliases = [f"d{index}" for index in range(len(query.dimensions))]
    dimension_columns = "".join(
        f", {_dimension_sql(name)} AS {alias}" for name, alias in zip(query.dimensions, dimension_aliases, strict=True)
    )
    conditions = [_filter_sql(clause, f"f{index}", params) for index, clause in enumerate(query.filters)]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    ctes.append(f"m AS (SELECT distinct_id, session_id, name{session_columns}{dimension_columns} FROM {source}{where})")
    if needs_sessions:
        partition = ", ".join([*dimension_aliases, "session_id"])
        ctes.append(f"g AS (SELECT *, row_number() OVER (PARTITION BY {partition}) = 1 AS session_first FROM m)")
    else:
        ctes.append("g AS (SELECT * FROM m)")

    metric_columns = ", ".join(f"{_METRICS[name]} AS {name}" for name in query.metrics)
    select_columns = ", ".join([*dimension_aliases, metric_columns])
    alias_of = {name: alias for name, alias in zip(query.dimensions, dimension_aliases, strict=True)}
    alias_of.update({name: name for name in query.metrics})
    order_terms = [
        f"{alias_of[ordering.field]} {'DESC' if ordering.descending else 'ASC'} NULLS LAST"
        for ordering in query.order_by
    ]
    # Dimensions last, so equal metric values page in a stable order.
    order_terms.extend(f"{alias} ASC NULLS LAST" for alias in dimension_aliases)
    group_by = f" GROUP BY {', '.join(dimension_aliases)}" if dimension_aliases else ""
    order = f" ORDER BY {', '.join(order_terms)}" if order_terms else ""
    params["limit"] = query.limit
    params["offset"] = query.offset
    sql = (
        f"WITH {', '.join(ctes)}"
        f" SELECT {select_columns}, count(*) OVER () AS total_rows FROM g{group_by}{order}"
        " LIMIT :limit OFFSET :offset"
    )
    return sql, params


async def aggregate(connection: AsyncConnection, query: AggregateQuery) -> tuple[list[AggregateRow], int]:
    """Rows of one page and the number of rows before limit/offset."""
    sql, params = build_aggregate_sql(query)
    try:
        result = await connection.execute(text(sql), params)
    except sa_exc.DBAPIError as exc:
        # Postgres is the judge of its own regular-expression dialect; Python's `re` is not.
        if exc.orig is not None and isinstance(exc.orig.__cause__, asyncpg.InvalidRegularExpressionError):
            raise InvalidPatternError(str(exc.orig.__cause__)) from exc
        raise
    rows: list[AggregateRow] = []
    total_rows = 0
    width = len(query.dimensions)
    for row in result:
        values = tuple(row)
        rows.append(AggregateRow(dimensions=values[:width], metrics=values[width:-1]))
        total_rows = int(values[-1])
    if not rows and query.offset > 0:
        total_rows = await _count_groups(connection, query)
    return rows, total_rows


async def _count_groups(connection: AsyncConnection, query: AggregateQuery) -> int:
    # A page past the end has no row to carry count(*) OVER (); ask for the first row instead.
    first_page = AggregateQuery(**{**query.__dict__, "limit": 1, "offset": 0})
    sql, params = build_aggregate_sql(first_page)
    result = await connection.execute(text(sql), params)
    row = result.first()
    return 0 if row is None else int(row[-1])


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
