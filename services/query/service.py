"""Decisions of the query service: date ranges in the project's timezone, spec validation, shaping."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY, HTTP_503_SERVICE_UNAVAILABLE
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import DATABASE_RETRY_AFTER_S, ApiError, is_statement_timeout
from services.common.project_repository import ProjectRecord
from services.common.ttl_cache import SharedTtlCache
from services.query import goal_repository, planner, repository
from services.query.goal_repository import GoalRecord
from services.query.planner import ResolvedRange, range_of
from services.query.repository import (
    AggregateQuery,
    CubePlan,
    ExitItemsPlan,
    FunnelStepMatch,
    GoalPairsPlan,
    InvalidPatternError,
    Plan,
)
from services.query.schemas import (
    ComparisonResult,
    ConversionsResponse,
    ConversionsSpec,
    DateRange,
    DateRangeFields,
    Filter,
    FunnelMeta,
    FunnelResponse,
    FunnelSpec,
    FunnelStepResult,
    Goal,
    GoalConversion,
    GoalList,
    GoalSpec,
    QueryMeta,
    QueryResponse,
    QuerySpec,
    RealtimeResponse,
    ResultRow,
    RetentionCohort,
    RetentionMeta,
    RetentionResponse,
    RetentionSpec,
    RetentionWeek,
)
from services.query.settings import QuerySettings
from services.query.vocabulary import HLL_RELATIVE_STANDARD_ERROR, TIME_DIMENSIONS

# Longer custom ranges would scan years of raw events for one request.
MAX_RANGE_DAYS = 3 * 366
# Custom dates outside these cannot hold events, and near year 1 or 9999 a day's local midnight
# (or the comparison period before it) is outside what a datetime can hold.
EARLIEST_DATE = date(1970, 1, 1)
LATEST_DATE = date(9999, 12, 30)
REALTIME_WINDOW = timedelta(minutes=5)
# Conversions are counted with one query per kind whose filter lists every goal of that kind,
# and a filter takes at most 100 values.
MAX_GOALS = 100
# A goal's kind and the dimension (and rollup cube) its visitors are counted by.
GOAL_DIMENSIONS = {"page": "page", "event": "event_name"}


def invalid(message: str, field: str) -> ApiError:
    return ApiError(HTTP_422_UNPROCESSABLE_ENTITY, "invalid_query", message, field=field)


def resolve_range(spec: DateRangeFields, timezone: str, now: datetime) -> ResolvedRange:
    today = now.astimezone(ZoneInfo(timezone)).date()
    if spec.period != "custom" and (spec.date_from is not None or spec.date_to is not None):
        raise invalid("date_from and date_to are only allowed with period 'custom'.", "period")
    if spec.period == "today":
        return range_of(today, today, timezone)
    if spec.period == "7d":
        return range_of(today - timedelta(days=6), today, timezone)
    if spec.period == "30d":
        return range_of(today - timedelta(days=29), today, timezone)
    if spec.period == "month":
        return range_of(today.replace(day=1), today, timezone)
    if spec.period == "12mo":
        month_index = today.year * 12 + today.month - 1 - 11
        return range_of(date(month_index // 12, month_index % 12 + 1, 1), today, timezone)
    if spec.date_from is None:
        raise invalid("period 'custom' needs date_from.", "date_from")
    if spec.date_to is None:
        raise invalid("period 'custom' needs date_to.", "date_to")
    if spec.date_from < EARLIEST_DATE:
        raise invalid(f"date_from must not be before {EARLIEST_DATE}.", "date_from")
    if spec.date_to > LATEST_DATE:
        raise invalid(f"date_to must not be after {LATEST_DATE}.", "date_to")
    if spec.date_from > spec.date_to:
        raise invalid("date_from must not be after date_to.", "date_from")
    resolved = range_of(spec.date_from, spec.date_to, timezone)
    if resolved.days > MAX_RANGE_DAYS:
        raise invalid(f"A date range may span at most {MAX_RANGE_DAYS} days.", "date_to")
    return resolved


def previous_period(current: ResolvedRange, timezone: str) -> ResolvedRange:
    date_to = current.date_from - timedelta(days=1)
    return range_of(date_to - timedelta(days=current.days - 1), date_to, timezone)


# Postgres refuses U+0000 in text: no stored value holds it, and sending it would be our 500.
_NUL_MESSAGE = "Text must not contain the NUL character (\\u0000)."


def _validate(spec: QuerySpec) -> None:
    for index, metric in enumerate(spec.metrics):
        if metric in spec.metrics[:index]:
            raise invalid(f"Metric '{metric}' is listed twice.", f"metrics[{index}]")
    time_dimensions = [name for name in spec.dimensions if name in TIME_DIMENSIONS]
    if len(time_dimensions) > 1:
        raise invalid("At most one time dimension per query.", "dimensions")
    for index, dimension in enumerate(spec.dimensions):
        if dimension in spec.dimensions[:index]:
            raise invalid(f"Dimension '{dimension}' is listed twice.", f"dimensions[{index}]")
    for index, condition in enumerate(spec.filters):
        field = f"filters[{index}].values"
        if condition.operator in ("contains", "matches") and any(value is None for value in condition.values):
            raise invalid(f"'{condition.operator}' needs text values, not null.", field)
        if any(value is not None and len(value) > 2000 for value in condition.values):
            raise invalid("Filter values are limited to 2000 characters.", field)
        if any(value is not None and "\x00" in value for value in condition.values):
            raise invalid(_NUL_MESSAGE, field)
    if spec.order_by is not None:
        known = {*spec.metrics, *spec.dimensions}
        for index, ordering in enumerate(spec.order_by):
            if ordering.field not in known:
                raise invalid(
                    f"Cannot order by '{ordering.field}': it is not one of the query's metrics or dimensions.",
                    f"order_by[{index}].field",
                )


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


# The normal quantile of the funnel's stated 95% intervals, and the share each side may miss.
_Z95 = 1.959964
_TAIL = 0.025
# Below this many sampled visitors (or, for a share, this many on its smaller side) the stated
# intervals are exact binomial (Clopper-Pearson) bounds; from here on Wilson's score interval,
# whose coverage is then within half a point of 95 % (docs/benchmarks.md). Wilson's alone fell to
# 84 % where a step's sampled visitors were a handful: 2 sampled at 1/8 made it say "at least 4",
# though 3 visitors give 2 or more sampled 4.3 % of the time.
_EXACT_BELOW = 50


def _binomial_cdf(x: int, n: int, p: float) -> float:
    """P(X <= x) for X ~ Binomial(n, p), summed term by term (x is small wherever this is used)."""
    if x >= n or p <= 0.0:
        return 1.0
    if p >= 1.0 or x < 0:
        return 0.0
    term = math.exp(n * math.log1p(-p))
    total = term
    odds = p / (1 - p)
    for k in range(x):
        term *= (n - k) / (k + 1) * odds
        total += term
    return min(total, 1.0)


def visitors_interval(sampled: int, rate: int) -> tuple[int, int]:
    """95% interval of N, the visitors who reached a step, when each is in the sample with
    probability p = 1/rate and `sampled` of them were. Exact binomial bounds (the N for which
    seeing `sampled` or more, or `sampled` or fewer, is at least 2.5 % likely) below
    _EXACT_BELOW sampled visitors; above, Wilson's score interval (the N with
    (|sampled - N p| - 1/2)^2 <= z^2 N p (1 - p), continuity-corrected). Holds an upper bound when
    none were sampled."""
    p = 1 / rate
    if sampled >= _EXACT_BELOW:

        def score_roots(count: float) -> tuple[float, float]:
            b = 2 * count * p + _Z95**2 * p * (1 - p)
            root = math.sqrt(max(0.0, b * b - 4 * p * p * count * count))
            return (b - root) / (2 * p * p), (b + root) / (2 * p * p)

        # With continuity correction (half a sampled visitor outwards): Wilson's own coverage dips to
        # 94.5 % at some N, this keeps it at 95 % or just over (tests/query/test_funnel_sampling.py).
        return math.floor(score_roots(sampled - 0.5)[0]), math.ceil(score_roots(sampled + 0.5)[1])
    # High: the largest N under which `sampled` or fewer is still >= 2.5 % likely (falls with N).
    low, high = sampled, 2 * (sampled + 30) * rate
    while low < high:
        middle = (low + high + 1) // 2
        if _binomial_cdf(sampled, middle, p) >= _TAIL:
            low = middle
        else:
            high = middle - 1
    upper = low
    if sampled == 0:
        return 0, upper
    # Low: the least N under which `sampled` or more is >= 2.5 % likely (rises with N).
    low, high = sampled, upper
    while low < high:
        middle = (low + high) // 2
        if 1.0 - _binomial_cdf(sampled - 1, middle, p) >= _TAIL:
            high = middle
        else:
            low = middle + 1
    return low, upper


def _share_bounds(part: int, whole: int) -> tuple[float, float]:
    """Clopper-Pearson 95% bounds of a share seen as part of whole (part small)."""
    # Every bound lies below this share: `part` or fewer out of `whole` would be > 4 standard
    # deviations under the mean there (widened to 1 if not).
    ceiling = min(1.0, (part + 10 + 4 * math.sqrt(part + 1)) / whole)
    if _binomial_cdf(part, whole, ceiling) >= _TAIL:
        ceiling = 1.0

    def solve(accept: Callable[[float], bool], low: float, high: float) -> float:
        # accept holds on [low, answer] and not beyond; to 1e-8, well under the 0.01 % stated.
        while high - low > 1e-8:
            middle = (low + high) / 2
            if accept(middle):
                low = middle
            else:
                high = middle
        return low

    upper = 1.0 if part == whole else solve(lambda q: _binomial_cdf(part, whole, q) >= _TAIL, 0.0, ceiling)
    lower = 0.0 if part == 0 else solve(lambda q: 1.0 - _binomial_cdf(part - 1, whole, q) < _TAIL, 0.0, upper)
    return lower, upper


def rate_interval(part: int, whole: int) -> tuple[float, float]:
    """95% interval, in percent, of a share measured as part of whole sampled visitors: exact
    binomial (Clopper-Pearson) while either side has fewer than _EXACT_BELOW, else Wilson's score."""
    if not whole:
        return 0.0, 100.0
    if min(part, whole - part) < _EXACT_BELOW:
        if part <= whole - part:
            low, high = _share_bounds(part, whole)
        else:
            failed_low, failed_high = _share_bounds(whole - part, whole)
            low, high = 1.0 - failed_high, 1.0 - failed_low
        return math.floor(10000 * low) / 100, math.ceil(10000 * high) / 100
    z2 = _Z95**2
    centre = (part + z2 / 2) / (whole + z2)
    half = _Z95 / (whole + z2) * math.sqrt(part * (whole - part) / whole + z2 / 4)
    return round(max(0.0, 100 * (centre - half)), 2), round(min(100.0, 100 * (centre + half)), 2)


def _meta(timezone: str, approximate_visitors: bool, from_rollups: bool) -> QueryMeta:
    return QueryMeta(
        timezone=timezone,
        source="rollups" if from_rollups else "events",
        exact=not approximate_visitors,
        visitors_relative_standard_error=round(HLL_RELATIVE_STANDARD_ERROR, 4) if approximate_visitors else None,
    )


class QueryService:
    """The query API's decisions: validation, date ranges, plans, and the shape of each answer.

    Every method that reads takes the request's read-only transaction; it first sets the query
    path's transaction settings (repository.configure_transaction), then reads.
    """

    def __init__(self, settings: QuerySettings, realtime_cache: SharedTtlCache[int, RealtimeResponse]) -> None:
        self.settings = settings
        self._realtime_cache = realtime_cache

    async def run_query(
        self, connection: AsyncConnection, project: ProjectRecord, spec: QuerySpec, now: datetime
    ) -> QueryResponse:
        _validate(spec)
        current = resolve_range(spec, project.timezone, now)
        await repository.configure_transaction(connection)
        query = planner.aggregate_query(project.project_id, project.timezone, spec, current)
        results, total_rows, from_rollups, estimated = await self._rows(connection, query, current)
        comparison = None
        if spec.comparison == "previous_period":
            previous = previous_period(current, project.timezone)
            previous_results, previous_total, previous_from_rollups, previous_estimated = await self._rows(
                connection, replace(query, start=previous.start, end=previous.end), previous
            )
            from_rollups = from_rollups or previous_from_rollups
            estimated = estimated or previous_estimated
            comparison = ComparisonResult(
                date_range=DateRange(previous.date_from, previous.date_to),
                results=previous_results,
                total_rows=previous_total,
            )
        return QueryResponse(
            date_range=DateRange(current.date_from, current.date_to),
            metrics=list(spec.metrics),
            dimensions=list(spec.dimensions),
            results=results,
            total_rows=total_rows,
            limit=spec.limit,
            offset=spec.offset,
            meta=_meta(project.timezone, estimated and "visitors" in spec.metrics, from_rollups),
            comparison=comparison,
        )

    async def rows_of(
        self, connection: AsyncConnection, project: ProjectRecord, spec: QuerySpec, span: ResolvedRange
    ) -> tuple[list[ResultRow], int, bool, bool]:
        """A validated spec's rows over this range (the caller has configured the transaction)."""
        query = planner.aggregate_query(project.project_id, project.timezone, spec, span)
        return await self._rows(connection, query, span)

    async def _rows(
        self, connection: AsyncConnection, query: AggregateQuery, span: ResolvedRange
    ) -> tuple[list[ResultRow], int, bool, bool]:
        """Result rows, rows before paging, whether the figures came from the rollups, and whether
        their visitors are estimates (the cubes', exit-page items' and goal pairs' sketches; the session days count
        them exactly)."""
        plan: Plan | None = await planner.plan(connection, query, span, self.settings)
        if plan is None:
            plan = await planner.exit_items_plan(connection, query, span, self.settings)
        if plan is None:
            plan = await planner.goal_pairs_plan(connection, query, span, self.settings)
        if plan is None:
            plan = await planner.session_day_plan(connection, query, span, self.settings)
        try:
            rows, total_rows = await repository.aggregate(connection, query, plan)
        except InvalidPatternError as exc:
            raise invalid(f"A 'matches' pattern is not a valid regular expression: {exc}", "filters") from exc
        results = [ResultRow(dimensions=list(row.dimensions), metrics=list(row.metrics)) for row in rows]
        return results, total_rows, plan is not None, isinstance(plan, CubePlan | ExitItemsPlan | GoalPairsPlan)

    async def realtime(
        self, project: ProjectRecord, read: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
    ) -> RealtimeResponse:
        """Visitors and pageviews of the last five minutes, counted once per project for the cache time.

        Every open dashboard polls this, so a cached answer must not hold a pooled connection:
        the route passes `read`, which opens a short read transaction, and only a miss calls it.
        """

        async def count() -> RealtimeResponse:
            async with read() as connection:
                await repository.configure_transaction(connection)
                since = datetime.now(UTC) - REALTIME_WINDOW
                visitors, pageviews = await repository.realtime(connection, project.project_id, since)
            return RealtimeResponse(
                visitors=visitors, pageviews=pageviews, window_seconds=int(REALTIME_WINDOW.total_seconds())
            )

        return await self._realtime_cache.get_or_load(project.project_id, count)

    async def funnel(
        self, connection: AsyncConnection, project: ProjectRecord, spec: FunnelSpec, now: datetime
    ) -> FunnelResponse:
        for index, step in enumerate(spec.steps):
            if "\x00" in step.value:
                raise invalid(_NUL_MESSAGE, f"steps[{index}].value")
        current = resolve_range(spec, project.timezone, now)
        matches = [FunnelStepMatch(step.type, step.value) for step in spec.steps]
        rate = 1
        try:
            await repository.configure_transaction(connection)
            if spec.sampling == "auto":
                volume = await planner.funnel_volume(
                    connection, project.project_id, current, project.timezone, matches, self.settings
                )
                rate = planner.funnel_sample_rate(volume, self.settings)
            sampled = await repository.funnel(
                connection,
                project.project_id,
                current.start,
                current.end,
                matches,
                spec.window_minutes * 60,
                sample_rate=rate,
            )
        except Exception as exc:
            if spec.sampling == "exact" and is_statement_timeout(exc):
                raise ApiError(
                    HTTP_503_SERVICE_UNAVAILABLE,
                    "query_timeout",
                    "The exact funnel took longer than the statement timeout allows over this range; ask with "
                    "sampling 'auto' (a visitor sample, with its error stated), or narrow the date range.",
                    field="sampling",
                    headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
                ) from exc
            raise
        counts = [count * rate for count in sampled]
        steps: list[FunnelStepResult] = []
        for index, (step, visitors) in enumerate(zip(spec.steps, counts, strict=True)):
            previous = counts[index - 1] if index else visitors
            low = high = rate_low = rate_high = None
            if rate > 1:
                low, high = visitors_interval(sampled[index], rate)
                # Step 1's rate is its own definition (100 %, or 0 when nobody started): no error.
                first = _percent(visitors, counts[0])
                rate_low, rate_high = rate_interval(sampled[index], sampled[0]) if index else (first, first)
            steps.append(
                FunnelStepResult(
                    step=index + 1,
                    type=step.type,
                    value=step.value,
                    visitors=visitors,
                    conversion_rate=_percent(visitors, counts[0]),
                    drop_off=previous - visitors,
                    drop_off_rate=_percent(previous - visitors, previous),
                    visitors_low=low,
                    visitors_high=high,
                    conversion_rate_low=rate_low,
                    conversion_rate_high=rate_high,
                )
            )
        return FunnelResponse(
            date_range=DateRange(current.date_from, current.date_to),
            window_minutes=spec.window_minutes,
            steps=steps,
            meta=FunnelMeta(
                source="sample" if rate > 1 else "events",
                sampled=rate > 1,
                sampling_rate=1 / rate,
                sampled_visitors=sampled[0],
            ),
        )

    async def retention(
        self, connection: AsyncConnection, project: ProjectRecord, spec: RetentionSpec, now: datetime
    ) -> RetentionResponse:
        current = resolve_range(spec, project.timezone, now)
        await repository.configure_transaction(connection)
        if await planner.retention_from_rollups(connection, project.project_id, current, self.settings):
            source: Literal["events", "rollups"] = "rollups"
            cells = await repository.retention_from_rollups(
                connection, project.project_id, current.date_from, current.date_to, spec.weeks
            )
        else:
            source = "events"
            cells = await repository.retention(
                connection, project.project_id, project.timezone, current.start, current.end, spec.weeks
            )
        by_cohort: dict[date, dict[int, int]] = {}
        for cell in cells:
            by_cohort.setdefault(cell.cohort_week, {})[cell.week_offset] = cell.visitors
        last_week = current.date_to - timedelta(days=current.date_to.weekday())
        cohorts: list[RetentionCohort] = []
        for cohort_week, active in sorted(by_cohort.items()):
            size = active.get(0, 0)
            # Only weeks that have begun inside the range are reported; later ones are unknown, not zero.
            elapsed = min(spec.weeks, (last_week - cohort_week).days // 7)
            cohorts.append(
                RetentionCohort(
                    week=cohort_week,
                    visitors=size,
                    retention=[
                        RetentionWeek(offset, active.get(offset, 0), _percent(active.get(offset, 0), size))
                        for offset in range(elapsed + 1)
                    ],
                )
            )
        return RetentionResponse(
            date_range=DateRange(current.date_from, current.date_to), cohorts=cohorts, meta=RetentionMeta(source)
        )


def _goal(record: GoalRecord) -> Goal:
    return Goal(
        id=str(record.goal_id), name=record.name, type=record.kind, value=record.value, created_at=record.created_at
    )


def goal_not_found() -> ApiError:
    return ApiError(404, "goal_not_found", "No such goal in this project.", field="id")


class GoalService:
    """A project's goals: saved definitions (goal_repository) and their conversions (the query path)."""

    def __init__(self, queries: QueryService) -> None:
        self._queries = queries

    async def list_goals(self, connection: AsyncConnection, project: ProjectRecord) -> GoalList:
        return GoalList(
            goals=[_goal(record) for record in await goal_repository.list_goals(connection, project.project_id)]
        )

    async def create_goal(self, connection: AsyncConnection, project: ProjectRecord, spec: GoalSpec) -> Goal:
        for field, text in (("value", spec.value), ("name", spec.name or "")):
            if "\x00" in text:
                raise invalid(_NUL_MESSAGE, field)
        if spec.type == "page" and not spec.value.startswith("/"):
            raise invalid("A page goal's value is a path, starting with '/'.", "value")
        if await goal_repository.count_goals(connection, project.project_id) >= MAX_GOALS:
            raise ApiError(409, "too_many_goals", f"A project has at most {MAX_GOALS} goals.", field="type")
        record = await goal_repository.create_goal(
            connection, project.project_id, name=spec.name or spec.value, kind=spec.type, value=spec.value
        )
        if record is None:
            raise ApiError(
                409, "goal_exists", f"This project already has the {spec.type} goal {spec.value!r}.", field="value"
            )
        return _goal(record)

    async def delete_goal(self, connection: AsyncConnection, project: ProjectRecord, goal_id: str) -> None:
        try:
            parsed = uuid.UUID(goal_id)
        except ValueError as exc:
            raise goal_not_found() from exc
        if not await goal_repository.delete_goal(connection, project.project_id, parsed):
            raise goal_not_found()

    async def conversions(
        self, connection: AsyncConnection, project: ProjectRecord, spec: ConversionsSpec, now: datetime
    ) -> ConversionsResponse:
        """Each goal's unique visitors and their share of all visitors, under the same filters.

        Three aggregate queries, whatever the number of goals: all visitors, visitors per page
        among the page goals' paths, visitors per event name among the event goals' names. They
        take the query API's path, so they read the page and event-name rollups where those hold
        the filters (visitors then HyperLogLog estimates, stated in `meta`).
        """
        goals = await goal_repository.list_goals(connection, project.project_id)
        total = QuerySpec(
            metrics=["visitors"],
            filters=spec.filters,
            period=spec.period,
            date_from=spec.date_from,
            date_to=spec.date_to,
        )
        _validate(total)
        current = resolve_range(total, project.timezone, now)
        await repository.configure_transaction(connection)
        rows, _, from_rollups, approximate = await self._queries.rows_of(connection, project, total, current)
        visitors = int(rows[0].metrics[0]) if rows else 0
        reached: dict[tuple[str, str], int] = {}
        for kind, dimension in GOAL_DIMENSIONS.items():
            values = [goal.value for goal in goals if goal.kind == kind]
            if not values:
                continue
            by_value = QuerySpec(
                metrics=["visitors"],
                dimensions=[dimension],  # type: ignore[list-item]
                filters=[*spec.filters, Filter(dimension=dimension, operator="is", values=list(values))],  # type: ignore[arg-type]
                period=spec.period,
                date_from=spec.date_from,
                date_to=spec.date_to,
                limit=len(values),
            )
            rows, _, rolled, estimated = await self._queries.rows_of(connection, project, by_value, current)
            from_rollups = from_rollups or rolled
            approximate = approximate or estimated
            for row in rows:
                reached[(kind, str(row.dimensions[0]))] = int(row.metrics[0])
        conversions = [
            GoalConversion(
                id=str(goal.goal_id),
                name=goal.name,
                type=goal.kind,
                value=goal.value,
                visitors=reached.get((goal.kind, goal.value), 0),
                conversion_rate=_percent(reached.get((goal.kind, goal.value), 0), visitors),
            )
            for goal in goals
        ]
        return ConversionsResponse(
            date_range=DateRange(current.date_from, current.date_to),
            visitors=visitors,
            goals=conversions,
            meta=_meta(project.timezone, approximate, from_rollups),
        )
