"""Decisions of the query service: date ranges in the project's timezone, spec validation, shaping."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import ApiError
from services.common.project_repository import ProjectRecord
from services.query import repository, rollup_repository
from services.query.repository import AggregateQuery, CubePlan, FilterClause, FunnelStepMatch, Ordering
from services.query.schemas import (
    ComparisonResult,
    DateRange,
    DateRangeFields,
    FunnelResponse,
    FunnelSpec,
    FunnelStepResult,
    QueryMeta,
    QueryResponse,
    QuerySpec,
    RealtimeResponse,
    ResultRow,
    RetentionCohort,
    RetentionResponse,
    RetentionSpec,
    RetentionWeek,
)
from services.query.settings import QuerySettings

# Longer custom ranges would scan years of raw events for one request.
MAX_RANGE_DAYS = 3 * 366
# Custom dates outside these cannot hold events, and near year 1 or 9999 a day's local midnight
# (or the comparison period before it) is outside what a datetime can hold.
EARLIEST_DATE = date(1970, 1, 1)
LATEST_DATE = date(9999, 12, 30)
REALTIME_WINDOW = timedelta(minutes=5)


def invalid(message: str, field: str) -> ApiError:
    return ApiError(HTTP_422_UNPROCESSABLE_ENTITY, "invalid_query", message, field=field)


@dataclass(frozen=True)
class ResolvedRange:
    date_from: date
    date_to: date  # inclusive
    start: datetime  # UTC instant of date_from's local midnight
    end: datetime  # UTC instant of the local midnight after date_to

    @property
    def days(self) -> int:
        return (self.date_to - self.date_from).days + 1


def local_midnight(day: date, timezone: str) -> datetime:
    # zoneinfo resolves a midnight that falls in a DST gap or fold consistently (fold=0).
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def range_of(date_from: date, date_to: date, timezone: str) -> ResolvedRange:
    return ResolvedRange(
        date_from, date_to, local_midnight(date_from, timezone), local_midnight(date_to + timedelta(days=1), timezone)
    )


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
    time_dimensions = [name for name in spec.dimensions if name.startswith("time:")]
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


def _default_order(spec: QuerySpec) -> tuple[Ordering, ...]:
    time_dimensions = [name for name in spec.dimensions if name.startswith("time:")]
    if time_dimensions:
        return (Ordering(time_dimensions[0], descending=False),)
    return (Ordering(spec.metrics[0], descending=True),)


def _number(metric: str, value: object) -> float | int:
    if metric in repository.INTEGER_METRICS:
        return int(value)  # type: ignore[call-overload, no-any-return]
    return float(value) if isinstance(value, Decimal | int | float) else 0.0


async def _plan(
    connection: AsyncConnection, query: AggregateQuery, span: ResolvedRange, settings: QuerySettings
) -> CubePlan | None:
    """Read the rollups when a cube answers the query and at least one day of the range is rolled up."""
    choice = repository.cube_for(query) if settings.rollups else None
    if choice is None:
        return None
    cube, grain = choice
    rolled = await rollup_repository.usable_days(
        connection, query.project_id, span.date_from, span.date_to, settings.rollup_max_staleness_s
    )
    if not rolled:
        return None
    weeks: set[date] = set()
    # A week's rows fit only when no time bucket splits its seven days (a month might).
    if cube.weekly_table is not None and all(
        name == "time:week" or not name.startswith("time:") for name in query.dimensions
    ):
        weeks = await rollup_repository.usable_weeks(
            connection, query.project_id, span.date_from, span.date_to, settings.rollup_max_staleness_s
        )
    in_weeks = {week + timedelta(days=n) for week in weeks for n in range(7)}
    rolled -= in_weeks
    computed = [span.date_from + timedelta(days=n) for n in range(span.days)]
    computed = [day for day in computed if day not in rolled and day not in in_weeks]
    return CubePlan(
        cube=cube,
        grain=grain,
        rolled_weeks=tuple(sorted(weeks)),
        rolled_days=tuple(sorted(rolled)),
        computed_days=tuple(computed),
        computed_start=local_midnight(computed[0], query.timezone) if computed else None,
        computed_end=local_midnight(computed[-1] + timedelta(days=1), query.timezone) if computed else None,
    )


async def _rows(
    connection: AsyncConnection, query: AggregateQuery, span: ResolvedRange, settings: QuerySettings
) -> tuple[list[ResultRow], int, bool]:
    """Result rows, rows before paging, and whether the figures came from the rollups."""
    plan = await _plan(connection, query, span, settings)
    try:
        rows, total_rows = await repository.aggregate(connection, query, plan)
    except repository.InvalidPatternError as exc:
        raise invalid(f"A 'matches' pattern is not a valid regular expression: {exc}", "filters") from exc
    results = [
        ResultRow(
            dimensions=list(row.dimensions),
            metrics=[_number(metric, value) for metric, value in zip(query.metrics, row.metrics, strict=True)],
        )
        for row in rows
    ]
    return results, total_rows, plan is not None


async def run_query(
    connection: AsyncConnection, project: ProjectRecord, spec: QuerySpec, now: datetime, settings: QuerySettings
) -> QueryResponse:
    _validate(spec)
    current = resolve_range(spec, project.timezone, now)
    order_by = (
        tuple(Ordering(item.field, item.direction == "desc") for item in spec.order_by)
        if spec.order_by
        else _default_order(spec)
    )
    query = AggregateQuery(
        project_id=project.project_id,
        timezone=project.timezone,
        start=current.start,
        end=current.end,
        metrics=tuple(spec.metrics),
        dimensions=tuple(spec.dimensions),
        filters=tuple(
            FilterClause(
                dimension=item.dimension,
                operator=item.operator,
                values=tuple(value for value in item.values if value is not None),
                includes_null=any(value is None for value in item.values),
            )
            for item in spec.filters
        ),
        order_by=order_by,
        limit=spec.limit,
        offset=spec.offset,
    )
    results, total_rows, from_rollups = await _rows(connection, query, current, settings)
    comparison = None
    if spec.comparison == "previous_period":
        previous = previous_period(current, project.timezone)
        previous_results, previous_total, previous_from_rollups = await _rows(
            connection, replace(query, start=previous.start, end=previous.end), previous, settings
        )
        from_rollups = from_rollups or previous_from_rollups
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
        meta=_meta(project.timezone, from_rollups and "visitors" in spec.metrics, from_rollups),
        comparison=comparison,
    )


def _meta(timezone: str, approximate_visitors: bool, from_rollups: bool) -> QueryMeta:
    return QueryMeta(
        timezone=timezone,
        source="rollups" if from_rollups else "events",
        exact=not approximate_visitors,
        visitors_relative_standard_error=(
            round(repository.HLL_RELATIVE_STANDARD_ERROR, 4) if approximate_visitors else None
        ),
    )


async def realtime(connection: AsyncConnection, project: ProjectRecord, now: datetime) -> RealtimeResponse:
    visitors, pageviews = await repository.realtime(connection, project.project_id, now - REALTIME_WINDOW)
    return RealtimeResponse(visitors=visitors, pageviews=pageviews, window_seconds=int(REALTIME_WINDOW.total_seconds()))


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


async def funnel(
    connection: AsyncConnection, project: ProjectRecord, spec: FunnelSpec, now: datetime
) -> FunnelResponse:
    for index, step in enumerate(spec.steps):
        if "\x00" in step.value:
            raise invalid(_NUL_MESSAGE, f"steps[{index}].value")
    current = resolve_range(spec, project.timezone, now)
    counts = await repository.funnel(
        connection,
        project_id=project.project_id,
        start=current.start,
        end=current.end,
        steps=[FunnelStepMatch(step.type, step.value) for step in spec.steps],
        window_seconds=spec.window_minutes * 60,
    )
    steps: list[FunnelStepResult] = []
    for index, (step, visitors) in enumerate(zip(spec.steps, counts, strict=True)):
        previous = counts[index - 1] if index else visitors
        steps.append(
            FunnelStepResult(
                step=index + 1,
                type=step.type,
                value=step.value,
                visitors=visitors,
                conversion_rate=_percent(visitors, counts[0]),
                drop_off=previous - visitors,
                drop_off_rate=_percent(previous - visitors, previous),
            )
        )
    return FunnelResponse(
        date_range=DateRange(current.date_from, current.date_to), window_minutes=spec.window_minutes, steps=steps
    )


async def retention(
    connection: AsyncConnection, project: ProjectRecord, spec: RetentionSpec, now: datetime
) -> RetentionResponse:
    current = resolve_range(spec, project.timezone, now)
    cells = await repository.retention(
        connection,
        project_id=project.project_id,
        timezone=project.timezone,
        start=current.start,
        end=current.end,
        weeks=spec.weeks,
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
    return RetentionResponse(date_range=DateRange(current.date_from, current.date_to), cohorts=cohorts)
