"""What a query can name, defined once: metrics, dimensions and where each lives, the rollup cubes.

The API's types (schemas.py), the planner's choice of cube (planner.py) and the SQL the
repositories build (repository.py, rollup_repository.py) all read the table below; a new
dimension is one row here. The expressions are fixed text keyed by the API's own names, the
whitelist from which the repository assembles SQL; no value from a request ever enters them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Metric = Literal["visitors", "pageviews", "sessions", "bounce_rate", "visit_duration", "views_per_session", "events"]
# Session metrics count each session once per group; integer metrics are counts (the rest may have a fraction).
SESSION_METRICS: frozenset[Metric] = frozenset({"sessions", "bounce_rate", "visit_duration", "views_per_session"})
INTEGER_METRICS: frozenset[Metric] = frozenset({"visitors", "pageviews", "events", "sessions"})

# Time buckets are results of a grouping, not properties of an event, so they cannot be filtered on.
TimeDimension = Literal["time:hour", "time:day", "time:week", "time:month"]
FilterDimension = Literal[
    "page",
    "domain",
    "referrer",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "country",
    "browser",
    "os",
    "device",
    "event_name",
    "entry_page",
    "exit_page",
]
Dimension = Literal[TimeDimension, FilterDimension]


@dataclass(frozen=True)
class DimensionSpec:
    """One dimension: its expression over raw events and over rollup rows.

    `raw` is over the raw path's events joined with their session (`ev JOIN sess`); `rolled` is
    over rollup rows (`day` and the cube's columns), None where no rollup holds the dimension.
    A visit dimension (`visit_source` set) is the session's first event's `visit_source` column,
    carried as `v_<name>` in `sess`; the cubes group by those.
    """

    raw: str
    rolled: str | None = None
    visit_source: str | None = None
    # A time bucket shorter or longer than a week (a day, a month) splits a week's seven days,
    # so weekly rollup rows cannot answer it.
    splits_weeks: bool = False
    # A property of each event rather than of the visit: a session belongs to every group it
    # has an event in, so its membership needs the session's events.
    per_event: bool = False
    # The column a cube must hold for this dimension (its fixed column), if not a visit dimension.
    cube_column: str | None = None


def _visit(source_column: str, name: str) -> DimensionSpec:
    return DimensionSpec(raw=f"v_{name}", rolled=name, visit_source=source_column)


def _bucket(expression: str, *, splits_weeks: bool = True) -> DimensionSpec:
    return DimensionSpec(raw=expression, rolled=expression, splits_weeks=splits_weeks)


# Buckets are rendered as text that sorts in time order, in the project's timezone; ISO weeks
# start on Monday. The visit dimensions' order is the bit order of the rollups' stored `grain`
# (see grain_id): it must not change without rebuilding every rollup.
DIMENSIONS: dict[Dimension, DimensionSpec] = {
    "time:hour": DimensionSpec(
        raw="to_char(date_trunc('hour', occurred_at AT TIME ZONE :timezone), 'YYYY-MM-DD\"T\"HH24:00')",
        rolled="to_char(day + make_interval(hours => hour), 'YYYY-MM-DD\"T\"HH24:00')",
        splits_weeks=True,
        cube_column="hour",
    ),
    "time:day": _bucket("to_char(day, 'YYYY-MM-DD')"),
    "time:week": _bucket("to_char(date_trunc('week', day), 'YYYY-MM-DD')", splits_weeks=False),
    "time:month": _bucket("to_char(day, 'YYYY-MM')"),
    "page": DimensionSpec(raw="path", rolled="page", per_event=True, cube_column="page"),
    "domain": DimensionSpec(raw="domain", rolled="domain", per_event=True, cube_column="domain"),
    "referrer": _visit("referrer_domain", "referrer"),
    "utm_source": _visit("utm_source", "utm_source"),
    "utm_medium": _visit("utm_medium", "utm_medium"),
    "utm_campaign": _visit("utm_campaign", "utm_campaign"),
    "country": _visit("country", "country"),
    "browser": _visit("browser", "browser"),
    "os": _visit("os", "os"),
    "device": _visit("device_type", "device"),
    "event_name": DimensionSpec(raw="name", rolled="event_name", per_event=True, cube_column="event_name"),
    "entry_page": DimensionSpec(raw="entry_page", rolled="entry_page", cube_column="entry_page"),
    "exit_page": DimensionSpec(raw="exit_page", rolled="exit_page", cube_column="exit_page"),
}
if tuple(DIMENSIONS) != get_args(Dimension):
    raise RuntimeError("DIMENSIONS must list exactly the Dimension names, in their order")

TIME_DIMENSIONS: tuple[str, ...] = get_args(TimeDimension)
VISIT_DIMENSIONS = tuple(name for name, spec in DIMENSIONS.items() if spec.visit_source is not None)

# One precision for every sketch: unions of sketches with different parameters are refused.
HLL_LOG2M = 12
# HyperLogLog's relative standard error is 1.04 / sqrt(2^log2m).
HLL_RELATIVE_STANDARD_ERROR = 1.04 / (2**HLL_LOG2M) ** 0.5


def grain_id(dimensions: frozenset[str]) -> int:
    """The `grain` of rows grouped by these visit dimensions (as GROUPING() computes it).

    GROUPING() puts its first argument in the highest bit and sets the bits of the dimensions a
    row is *not* grouped by.
    """
    width = len(VISIT_DIMENSIONS)
    return sum(1 << (width - 1 - index) for index, name in enumerate(VISIT_DIMENSIONS) if name not in dimensions)


@dataclass(frozen=True)
class FixedColumn:
    """A cube's column that every one of its grains holds: the page, the entry or exit page, the hour.

    `event` is its value for an event row (over `base`: an event with its session's columns),
    `session` for a session row. A `per_event` column (the page) is a property of each event: a
    session has a row per value among its events (over `base`); otherwise one (over `sess`).
    """

    name: str
    sql_type: str
    event: str
    session: str
    per_event: bool = False


@dataclass(frozen=True)
class Cube:
    """A rollup table: rows per day and grain; `fixed` columns are in every grain.

    `weekly_table`, if any, holds the same rows pre-unioned per complete week (Monday first).
    A cube without `session_rows` holds only event rows (visitors, pageviews, events; its session
    figures are 0): it answers no session metric, and a query may leave some of its fixed columns
    out (their rows are unioned: visitors are sketches, the rest sums), e.g. event names per page
    read for event names alone under a page filter.
    """

    table: str
    fixed_columns: tuple[FixedColumn, ...]
    grains: tuple[frozenset[str], ...]
    weekly_table: str | None = None
    session_rows: bool = True

    @property
    def fixed(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.fixed_columns)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.fixed, *VISIT_DIMENSIONS)

    @property
    def per_event(self) -> bool:
        return any(column.per_event for column in self.fixed_columns)

    def grain_for(self, dimensions: set[str]) -> frozenset[str] | None:
        """The smallest stored grain that holds these dimensions."""
        wanted = dimensions - set(self.fixed)
        candidates = [grain for grain in self.grains if wanted <= grain]
        return min(candidates, key=len) if candidates else None


def _grains_up_to_pairs(extra: tuple[frozenset[str], ...] = ()) -> tuple[frozenset[str], ...]:
    singles = [frozenset({name}) for name in VISIT_DIMENSIONS]
    pairs = [
        frozenset({first, second})
        for index, first in enumerate(VISIT_DIMENSIONS)
        for second in VISIT_DIMENSIONS[index + 1 :]
    ]
    return (frozenset(), *singles, *pairs, *extra)


_SINGLES = (frozenset(), *(frozenset({name}) for name in VISIT_DIMENSIONS))
PAGE = FixedColumn("page", "text", event="path", session="path", per_event=True)
ENTRY_PAGE = FixedColumn("entry_page", "text", event="entry_page", session="entry_page")
EXIT_PAGE = FixedColumn("exit_page", "text", event="exit_page", session="exit_page")
# The local hour of the event, or of the session's start.
HOUR = FixedColumn(
    "hour",
    "smallint",
    event="extract(hour FROM occurred_at AT TIME ZONE :timezone)::smallint",
    session="extract(hour FROM s_started_at AT TIME ZONE :timezone)::smallint",
)

# Visits: totals, each visit dimension, each pair (one filter plus one breakdown), and the full
# cube for anything with more dimensions. Pages: each page alone and with one visit dimension.
VISITS_CUBE = Cube("query_rollup_visits", (), _grains_up_to_pairs((frozenset(VISIT_DIMENSIONS),)))
# Only pages have weekly rows: a page query unions a sketch per page and day, hundreds of
# pages times thirty days, where a visits query unions thirty.
PAGES_CUBE = Cube("query_rollup_pages", (PAGE,), _SINGLES, weekly_table="query_rollup_page_weeks")
DOMAIN = FixedColumn("domain", "text", event="domain", session="domain", per_event=True)
EVENT_NAME = FixedColumn("event_name", "text", event="name", session="name", per_event=True)
# Entry and exit pages and hours, each alone and with one visit dimension (migration 0650).
ENTRY_PAGES_CUBE = Cube("query_rollup_entry_pages", (ENTRY_PAGE,), _SINGLES)
EXIT_PAGES_CUBE = Cube("query_rollup_exit_pages", (EXIT_PAGE,), _SINGLES)
HOURS_CUBE = Cube("query_rollup_hours", (HOUR,), _SINGLES)
# Domains: a handful of values, alone (migration 0660) and with one visit dimension (0810).
# Event names: alone, with one visit dimension (migration 0770), so goal conversions and custom
# events under a visit filter read them, and with two (0810: under two visit chips).
DOMAINS_CUBE = Cube("query_rollup_domains", (DOMAIN,), _SINGLES)
EVENT_NAMES_CUBE = Cube("query_rollup_event_names", (EVENT_NAME,), _grains_up_to_pairs())
# Events per (event name, page), event rows only (migration 0810): an event name under a page
# filter, or a page under an event-name filter (the same event has both: the raw path's
# semantics), e.g. the Goals card's event goals under a page chip and its page goals under an
# event chip. Without session rows a refresh merges it from the new events alone.
EVENT_PAGES_CUBE = Cube("query_rollup_event_pages", (EVENT_NAME, PAGE), (frozenset(),), session_rows=False)
# The same per entry page of the event's session (migration 0810): event names and pages under an
# entry-page chip, e.g. the Goals card's event and page goals (a query leaves the other out).
ENTRY_EVENT_PAGES_CUBE = Cube(
    "query_rollup_entry_event_pages", (ENTRY_PAGE, EVENT_NAME, PAGE), (frozenset(),), session_rows=False
)
# Last: a cube that may leave fixed columns out must not take a query an earlier cube answers.
CUBES = (
    VISITS_CUBE,
    PAGES_CUBE,
    ENTRY_PAGES_CUBE,
    EXIT_PAGES_CUBE,
    HOURS_CUBE,
    DOMAINS_CUBE,
    EVENT_NAMES_CUBE,
    EVENT_PAGES_CUBE,
    ENTRY_EVENT_PAGES_CUBE,
)
