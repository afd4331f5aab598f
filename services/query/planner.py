"""How an aggregate query is answered: the whole decision, made here and nowhere else.

From a validated spec and its date range the planner makes the `AggregateQuery` (what to
count), then the plan (where to read it): raw events, or a rollup cube and its grain, with the
complete weeks read from weekly rows, the days read from daily rows and the days computed from
events. The repository builds and runs the SQL for the plan it is given. Likewise for a funnel
with auto sampling: how much it would read, and so whether it follows every visitor or a sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from services.query import goal_pairs_repository, repository, rollup_repository
from services.query.repository import (
    SAMPLE_RATES,
    AggregateQuery,
    CubePlan,
    ExitItemsPlan,
    FilterClause,
    FunnelStepMatch,
    FunnelVolume,
    GoalPairsPlan,
    Ordering,
    SessionDayPlan,
)
from services.query.schemas import QuerySpec
from services.query.settings import QuerySettings
from services.query.vocabulary import (
    CUBES,
    DIMENSIONS,
    SESSION_METRICS,
    TIME_DIMENSIONS,
    VISIT_DIMENSIONS,
    Cube,
    grain_id,
)


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


def default_order(spec: QuerySpec) -> tuple[Ordering, ...]:
    """Time ascending if grouped by time, else the first metric descending."""
    time_dimensions = [name for name in spec.dimensions if name in TIME_DIMENSIONS]
    if time_dimensions:
        return (Ordering(time_dimensions[0], descending=False),)
    return (Ordering(spec.metrics[0], descending=True),)


def aggregate_query(project_id: int, timezone: str, spec: QuerySpec, span: ResolvedRange) -> AggregateQuery:
    """What a validated spec asks for, over this range."""
    return AggregateQuery(
        project_id=project_id,
        timezone=timezone,
        start=span.start,
        end=span.end,
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
        order_by=(
            tuple(Ordering(item.field, item.direction == "desc") for item in spec.order_by)
            if spec.order_by
            else default_order(spec)
        ),
        limit=spec.limit,
        offset=spec.offset,
    )


def cube_for(query: AggregateQuery) -> tuple[Cube, frozenset[str]] | None:
    """The cube and grain that answer this query with the raw path's semantics, if any."""
    if any(DIMENSIONS[name].rolled is None for name in query.dimensions):
        return None
    plain_dimensions = [name for name in query.dimensions if name not in TIME_DIMENSIONS]
    used: set[str] = {*plain_dimensions, *(clause.dimension for clause in query.filters)}
    # A time bucket finer than a day needs a cube that holds it (the hour).
    used |= {
        column for name in query.dimensions if (column := DIMENSIONS[name].cube_column) and name in TIME_DIMENSIONS
    }
    for cube in CUBES:
        if not used <= set(cube.columns):
            continue
        if not cube.session_rows:
            # Event rows only: no session metric; fixed columns the query leaves out are unioned.
            if SESSION_METRICS.intersection(query.metrics) or not used & set(cube.fixed):
                continue
        elif not set(cube.fixed) <= used:
            continue
        fixed = cube.fixed[0] if cube.fixed else None
        if cube.per_event and SESSION_METRICS.intersection(query.metrics) and fixed not in plain_dimensions:
            # Page rows count a session once per page; summing several pages' rows would count a
            # session that saw two of them twice. Only one exact page keeps that sum exact (and
            # so for domains and event names). A session has one entry page, one exit page and
            # one start hour: those rows add up.
            page_filters = [clause for clause in query.filters if clause.dimension == fixed]
            if not any(
                clause.operator == "is" and len(clause.values) == 1 and not clause.includes_null
                for clause in page_filters
            ):
                continue
        grain = cube.grain_for(used)
        if grain is not None:
            return cube, grain
    return None


async def plan(
    connection: AsyncConnection, query: AggregateQuery, span: ResolvedRange, settings: QuerySettings
) -> CubePlan | None:
    """Read the rollups when a cube answers the query and at least one day of the range is rolled
    up; None: read the raw events."""
    choice = cube_for(query) if settings.rollups else None
    if choice is None:
        return None
    cube, grain = choice
    states = await rollup_repository.day_states(
        connection, query.project_id, span.date_from, span.date_to, settings.rollup_max_staleness_s
    )
    rolled = {day for day, usable in states.items() if usable}
    if not rolled:
        return None
    weeks: set[date] = set()
    # A week's rows fit only when no time bucket splits its seven days (a month might).
    if cube.weekly_table is not None and not any(DIMENSIONS[name].splits_weeks for name in query.dimensions):
        weeks = await rollup_repository.usable_weeks(
            connection, query.project_id, span.date_from, span.date_to, settings.rollup_max_staleness_s
        )
    in_weeks = {week + timedelta(days=n) for week in weeks for n in range(7)}
    rolled -= in_weeks
    # Days without events (no marker) need nothing: a 12-month range with 30 days of data
    # computes none of the other 335 from the events.
    computed = sorted(day for day in states if day not in rolled and day not in in_weeks)
    return CubePlan(
        cube=cube,
        grain=grain,
        rolled_weeks=tuple(sorted(weeks)),
        rolled_days=tuple(sorted(rolled)),
        computed_days=tuple(computed),
        computed_start=local_midnight(computed[0], query.timezone) if computed else None,
        computed_end=local_midnight(computed[-1] + timedelta(days=1), query.timezone) if computed else None,
    )


# What the session days' pages and event names answer (migration 0850), per grouped dimension:
# the metrics they hold. Filters may be on visit dimensions, the exit page and that dimension.
SESSION_DAY_METRICS: dict[str, frozenset[str]] = {
    "page": frozenset({"visitors"}),
    "event_name": frozenset({"visitors", "events", "pageviews"}),
}


def session_days_answer(query: AggregateQuery) -> bool:
    """Whether the session days' pages or event names answer this query with the raw path's
    semantics: grouped by page or by event name alone, counting what they hold, filtered on
    what each session day holds (its visit and exit page) and on that same dimension."""
    if len(query.dimensions) != 1 or query.dimensions[0] not in SESSION_DAY_METRICS:
        return False
    (dimension,) = query.dimensions
    allowed = {*VISIT_DIMENSIONS, "exit_page", dimension}
    return set(query.metrics) <= SESSION_DAY_METRICS[dimension] and all(
        clause.dimension in allowed for clause in query.filters
    )


async def session_day_plan(
    connection: AsyncConnection, query: AggregateQuery, span: ResolvedRange, settings: QuerySettings
) -> SessionDayPlan | None:
    """For a query no cube answers (e.g. goals under an exit-page chip or two visit chips): the
    session days for the days the rollups hold, events for the others; None: read the events."""
    if not settings.rollups or not session_days_answer(query):
        return None
    states = await rollup_repository.day_states(
        connection, query.project_id, span.date_from, span.date_to, settings.rollup_max_staleness_s
    )
    rolled = sorted(day for day, usable in states.items() if usable)
    if not rolled:
        return None
    computed = sorted(day for day, usable in states.items() if not usable)
    return SessionDayPlan(
        rolled_days=tuple(rolled),
        computed_days=tuple(computed),
        computed_start=local_midnight(computed[0], query.timezone) if computed else None,
        computed_end=local_midnight(computed[-1] + timedelta(days=1), query.timezone) if computed else None,
    )


def exit_items_answer(query: AggregateQuery) -> bool:
    """Whether the exit-page items (migration 0900) answer this query: one the session days
    answer, under an exit-page chip and no visit chip (the items hold no visit)."""
    filtered = {clause.dimension for clause in query.filters}
    return session_days_answer(query) and "exit_page" in filtered and filtered <= {"exit_page", *query.dimensions}


async def exit_items_plan(
    connection: AsyncConnection, query: AggregateQuery, span: ResolvedRange, settings: QuerySettings
) -> ExitItemsPlan | None:
    """For a page or event-name query under an exit-page chip (the Goals, Custom events and Top
    pages cards): the exit-page items for the days the rollups hold, events for the others;
    None: ask session_day_plan."""
    if not settings.rollups or not exit_items_answer(query):
        return None
    plan = await session_day_plan(connection, query, span, settings)
    if plan is None:
        return None
    # A day whose items lag its session days (the latest, merged into under live ingest) is read
    # from its session days, sketched.
    stale = await rollup_repository.exit_items_stale_days(connection, query.project_id, span.date_from, span.date_to)
    return ExitItemsPlan(
        rolled_days=tuple(day for day in plan.rolled_days if day not in stale),
        computed_days=plan.computed_days,
        computed_start=plan.computed_start,
        computed_end=plan.computed_end,
        session_days=tuple(day for day in plan.rolled_days if day in stale),
    )


def goal_pairs_grain(query: AggregateQuery) -> frozenset[str] | None:
    """The pair of visit dimensions whose goal pairs (migration 1000) answer this query, if any:
    visitors by page under one `is` filter listing pages and filters on exactly two visit
    dimensions (the Goals card's page goals under two visit chips)."""
    if query.dimensions != ("page",) or set(query.metrics) != {"visitors"}:
        return None
    pages = [clause for clause in query.filters if clause.dimension == "page"]
    if len(pages) != 1 or pages[0].operator != "is" or pages[0].includes_null:
        return None
    visits = {clause.dimension for clause in query.filters if clause.dimension != "page"}
    if len(visits) != 2 or not visits <= set(VISIT_DIMENSIONS):
        return None
    return frozenset(visits)


async def goal_pairs_plan(
    connection: AsyncConnection, query: AggregateQuery, span: ResolvedRange, settings: QuerySettings
) -> GoalPairsPlan | None:
    """For the page goals under two visit chips: the goal pairs for the rolled days whose pairs
    are current and hold every listed page, the session days for the other rolled days, events
    for the rest; None (ask session_day_plan) when no day's goal pairs answer."""
    pair = goal_pairs_grain(query) if settings.rollups else None
    if pair is None:
        return None
    plan = await session_day_plan(connection, query, span, settings)
    if plan is None:
        return None
    (listed,) = (clause for clause in query.filters if clause.dimension == "page")
    pages = sorted(set(listed.values))
    current = await goal_pairs_repository.current_days(
        connection, query.project_id, span.date_from, span.date_to, pages
    )
    if not current & set(plan.rolled_days):
        return None
    return GoalPairsPlan(
        grain=grain_id(pair),
        rolled_days=tuple(day for day in plan.rolled_days if day in current),
        session_days=tuple(day for day in plan.rolled_days if day not in current),
        computed_days=plan.computed_days,
        computed_start=plan.computed_start,
        computed_end=plan.computed_end,
    )


async def retention_from_rollups(
    connection: AsyncConnection, project_id: int, span: ResolvedRange, settings: QuerySettings
) -> bool:
    """Whether retention cohorts over the range may be read from the retention rollup.

    All or nothing: every week of the range that holds a day with events must have rows that are
    exactly current (stamped with the latest build among the project's days up to its Sunday,
    every one of those days current) or built less than max_staleness_s ago while every one of
    those days has been built. Otherwise the sessions are read. Weeks without events hold no
    rows and need none.
    """
    if not settings.rollups:
        return False
    first_week = span.date_from - timedelta(days=span.date_from.weekday())
    last_week = span.date_to - timedelta(days=span.date_to.weekday())
    states = await rollup_repository.retention_week_states(
        connection, project_id, first_week, last_week, settings.rollup_max_staleness_s
    )
    # A purge (erasure, retention, a timezone change) marks days never built: no week after
    # such a day is read, however recently it was built, until the day is rebuilt.
    return all(
        state.stamp is not None
        and ((state.fresh and state.days_built) or (state.days_current and state.stamp == state.days_built_at))
        for state in states
    )


# The sample that estimates the volume of the days the rollups do not hold yet.
VOLUME_SAMPLE_RATE = 64


async def funnel_volume(
    connection: AsyncConnection,
    project_id: int,
    span: ResolvedRange,
    timezone: str,
    steps: list[FunnelStepMatch],
    settings: QuerySettings,
) -> FunnelVolume:
    """How much a funnel over the range would read: exact counts from the daily rollups for the
    days they hold, an estimate from the 1/64 visitor sample for the days they do not (over one
    span from the first to the last such day, so it may count a rolled-up day twice: the
    estimate errs towards more, and so towards sampling, never towards a timeout)."""
    states = await rollup_repository.day_states(
        connection, project_id, span.date_from, span.date_to, settings.rollup_max_staleness_s
    )
    rolled = sorted(day for day, usable in states.items() if usable and settings.rollups)
    missing = sorted(day for day in states if day not in rolled)
    events = step_events = 0
    if rolled:
        volume = await repository.funnel_volume_from_rollups(connection, project_id, rolled, steps)
        events, step_events = volume.events, volume.step_events
    if missing:
        volume = await repository.funnel_volume_from_sample(
            connection,
            project_id,
            local_midnight(missing[0], timezone),
            local_midnight(missing[-1] + timedelta(days=1), timezone),
            steps,
            VOLUME_SAMPLE_RATE,
        )
        events, step_events = events + volume.events, step_events + volume.step_events
    return FunnelVolume(events, step_events)


def funnel_sample_rate(volume: FunnelVolume, settings: QuerySettings) -> int:
    """1 (every event) when the range's events are few enough to follow every visitor in time;
    else the least sampling (1/8, 1/16, ... 1/512 of the visitors) whose share of the step events
    is few enough; the sparsest when none is."""
    if volume.events <= settings.funnel_exact_max_events:
        return 1
    for rate in SAMPLE_RATES:
        if volume.step_events / rate <= settings.funnel_sample_max_step_events:
            return rate
    return SAMPLE_RATES[-1]
