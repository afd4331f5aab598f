"""Request and response bodies of the query API (msgspec structs, validated by Litestar)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

from services.query.vocabulary import Dimension, FilterDimension, Metric

Operator = Literal["is", "is_not", "contains", "matches"]
Period = Literal["today", "7d", "30d", "month", "12mo", "custom"]

PERIOD_DESCRIPTION = (
    "Date range in the project's timezone, always ending with today except 'custom': 'today'; '7d' and '30d' "
    "(today and the 6 or 29 days before); 'month' (the 1st of this month to today); '12mo' (the 1st of the month "
    "11 months ago to today); 'custom' needs date_from and date_to (inclusive)."
)


class Filter(msgspec.Struct, forbid_unknown_fields=True):
    """One condition; a query's filters are combined with AND."""

    dimension: FilterDimension
    operator: Annotated[
        Operator,
        msgspec.Meta(
            description="'is' / 'is_not': equal to any of / none of the values (null matches a missing value, "
            "e.g. direct traffic for 'referrer'); 'contains': case-insensitive substring of any value; "
            "'matches': POSIX regular expression (Postgres '~') matching any value."
        ),
    ]
    values: Annotated[list[str | None], msgspec.Meta(min_length=1, max_length=100)]


class OrderBy(msgspec.Struct, forbid_unknown_fields=True):
    field: Annotated[str, msgspec.Meta(description="A metric or dimension of the query.")]
    direction: Literal["asc", "desc"] = "desc"


class DateRangeFields(msgspec.Struct, kw_only=True):
    period: Annotated[Period, msgspec.Meta(description=PERIOD_DESCRIPTION)] = "30d"
    date_from: date | None = None
    date_to: date | None = None


class QuerySpec(DateRangeFields, forbid_unknown_fields=True, kw_only=True):
    """A dashboard query in the spirit of Plausible's Stats API v2."""

    metrics: Annotated[list[Metric], msgspec.Meta(min_length=1)]
    dimensions: list[Dimension] = msgspec.field(default_factory=list)
    filters: list[Filter] = msgspec.field(default_factory=list)
    comparison: Annotated[
        Literal["previous_period"] | None,
        msgspec.Meta(description="Also run the query over the same number of days just before the range."),
    ] = None
    order_by: Annotated[
        list[OrderBy] | None,
        msgspec.Meta(description="Default: time ascending if grouped by time, else the first metric descending."),
    ] = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    # Postgres's OFFSET is a bigint: a larger one would fail in the driver (a 500), not page.
    offset: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


class DateRange(msgspec.Struct):
    date_from: date
    date_to: date


class ResultRow(msgspec.Struct):
    dimensions: list[str | None]
    # One JSON number per metric: counts are integers, rates and durations may have a fraction.
    # (float | int would be documented as oneOf number/integer, which no integer satisfies.)
    metrics: list[float]


class ComparisonResult(msgspec.Struct):
    date_range: DateRange
    results: list[ResultRow]
    total_rows: int


class QueryMeta(msgspec.Struct, omit_defaults=True):
    timezone: str
    source: Annotated[
        Literal["events", "rollups"],
        msgspec.Meta(description="'rollups': per-day rollups (plus raw events for days not rolled up yet)."),
    ]
    exact: Annotated[
        bool, msgspec.Meta(description="False when unique visitors are HyperLogLog estimates; other metrics are exact.")
    ]
    visitors_relative_standard_error: Annotated[
        float | None,
        msgspec.Meta(
            description="When visitors are estimates: their relative standard error (1.04/sqrt(4096) = 1.63%); "
            "about 95% of estimates are within 2 and 99.7% within 3 standard errors of the exact count. Counts up "
            "to a few hundred visitors per group are exact."
        ),
    ] = None


class QueryResponse(msgspec.Struct):
    """Rows in ``results`` list dimension values and metric values in the order the query named them."""

    date_range: DateRange
    metrics: list[str]
    dimensions: list[str]
    results: list[ResultRow]
    total_rows: Annotated[int, msgspec.Meta(description="Rows before limit/offset, for pagination.")]
    limit: int
    offset: int
    meta: QueryMeta
    comparison: ComparisonResult | None = None


class RealtimeResponse(msgspec.Struct):
    visitors: Annotated[int, msgspec.Meta(description="Unique visitors with an event in the last 5 minutes.")]
    pageviews: int
    window_seconds: int


class FunnelStep(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["page", "event"]
    value: Annotated[str, msgspec.Meta(min_length=1, description="A page path or an event name, matched exactly.")]


class FunnelSpec(DateRangeFields, forbid_unknown_fields=True, kw_only=True):
    steps: Annotated[list[FunnelStep], msgspec.Meta(min_length=2, max_length=8)]
    window_minutes: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=60 * 24 * 31,
            description="All steps must happen within this long after the visitor's first step-1 event in range.",
        ),
    ] = 60 * 24
    sampling: Annotated[
        Literal["auto", "exact"],
        msgspec.Meta(
            description="'auto': follow every visitor when the range is small enough to answer quickly, else a "
            "stable sample of the visitors (1/8 down to 1/512, by a hash of the visitor id) scaled up, stated in "
            "`meta` with a 95% interval per step. 'exact': every visitor, whatever the range holds; a large "
            "range may then exceed the statement timeout (503 'query_timeout')."
        ),
    ] = "auto"


class FunnelStepResult(msgspec.Struct, omit_defaults=True):
    step: int
    type: str
    value: str
    visitors: Annotated[
        int, msgspec.Meta(description="Visitors who reached this step; when sampled, the sample's count times 1/rate.")
    ]
    conversion_rate: Annotated[float, msgspec.Meta(description="Percent of step-1 visitors who reached this step.")]
    drop_off: Annotated[int, msgspec.Meta(description="Visitors of the previous step who did not reach this one.")]
    drop_off_rate: Annotated[float, msgspec.Meta(description="drop_off as a percent of the previous step.")]
    visitors_low: Annotated[
        int | None,
        msgspec.Meta(
            description="When sampled: the 95% interval of visitors (binomial: exact bounds below 50 sampled visitors,"
            " Wilson score above). Checked against exact funnels in docs/benchmarks.md."
        ),
    ] = None
    visitors_high: int | None = None
    conversion_rate_low: Annotated[
        float | None,
        msgspec.Meta(
            description="When sampled: the 95% interval of conversion_rate among the sample (binomial: exact bounds"
            " while fewer than 50 sampled visitors are on either side, Wilson score above)."
        ),
    ] = None
    conversion_rate_high: float | None = None


class FunnelMeta(msgspec.Struct):
    source: Annotated[
        Literal["events", "sample"],
        msgspec.Meta(
            description="'events': every visitor's events (exact); 'sample': the events of a fixed share of the "
            "visitors (those whose hashed id falls in it, the same visitors on every call), scaled up."
        ),
    ]
    sampled: bool
    sampling_rate: Annotated[
        float, msgspec.Meta(description="The share of visitors followed: 1, or a power of two from 1/8 to 1/512.")
    ]
    sampled_visitors: Annotated[
        int, msgspec.Meta(description="Step-1 visitors in the sample (all of them when not sampled).")
    ]


class FunnelResponse(msgspec.Struct):
    date_range: DateRange
    window_minutes: int
    steps: list[FunnelStepResult]
    meta: FunnelMeta


class RetentionSpec(DateRangeFields, forbid_unknown_fields=True, kw_only=True):
    """Weekly cohorts of visitors by the week (Monday, project timezone) they were first seen."""

    weeks: Annotated[int, msgspec.Meta(ge=1, le=52, description="Following weeks to report per cohort.")] = 8


class RetentionWeek(msgspec.Struct):
    week_offset: int
    visitors: int
    percentage: float


class RetentionCohort(msgspec.Struct):
    week: Annotated[date, msgspec.Meta(description="Monday of the cohort's first-seen week.")]
    visitors: int
    retention: list[RetentionWeek]


class RetentionMeta(msgspec.Struct):
    source: Annotated[
        Literal["events", "rollups"],
        msgspec.Meta(
            description="'rollups': the retention rollup (visitors per first-seen day and first active day of "
            "each week), used when every week of the range is current there; 'events': the sessions. Both exact."
        ),
    ]


class RetentionResponse(msgspec.Struct):
    date_range: DateRange
    cohorts: list[RetentionCohort]
    meta: RetentionMeta


GoalType = Literal["page", "event"]


class GoalSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A goal to save for the project: visitors who reached it are its conversions."""

    type: Annotated[
        GoalType,
        msgspec.Meta(description="'page': visited the path `value` (exactly); 'event': sent the custom event `value`."),
    ]
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
    name: (
        Annotated[
            str, msgspec.Meta(min_length=1, max_length=200, description="Shown on the dashboard; default: `value`.")
        ]
        | None
    ) = None


class Goal(msgspec.Struct):
    id: str
    name: str
    type: str
    value: str
    created_at: datetime


class GoalList(msgspec.Struct):
    goals: list[Goal]


class ConversionsSpec(DateRangeFields, forbid_unknown_fields=True, kw_only=True):
    """The project's goals' conversions over a date range, among the visitors these filters keep."""

    filters: list[Filter] = msgspec.field(default_factory=list)


class GoalConversion(msgspec.Struct):
    id: str
    name: str
    type: str
    value: str
    visitors: Annotated[int, msgspec.Meta(description="Unique visitors who reached the goal in the range.")]
    conversion_rate: Annotated[
        float, msgspec.Meta(description="visitors as a percent of all the range's visitors (with the same filters).")
    ]


class ConversionsResponse(msgspec.Struct):
    date_range: DateRange
    visitors: Annotated[int, msgspec.Meta(description="All unique visitors of the range (with the filters).")]
    goals: list[GoalConversion]
    meta: QueryMeta
