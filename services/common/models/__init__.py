"""Every table, one module each; importing this package registers them on ``Base.metadata``."""

from services.common.models.base import Base
from services.common.models.event import Event
from services.common.models.event_session_url import EventSessionUrl
from services.common.models.ingested_event import IngestedEvent
from services.common.models.project import Project
from services.common.models.query_goal import QueryGoal
from services.common.models.query_rollup_day import QueryRollupDay
from services.common.models.query_rollup_increment import (
    query_rollup_events_counted,
    query_rollup_events_items,
    query_rollup_events_staged,
    query_rollup_exit_items,
    query_rollup_goal_pair_days,
    query_rollup_goal_pairs,
    query_rollup_pending,
    query_rollup_session_days,
    query_rollup_sessions_folded,
    query_rollup_sessions_staged,
)
from services.common.models.query_rollup_page import query_rollup_page_weeks, query_rollup_pages
from services.common.models.query_rollup_retention import QueryRollupRetention, QueryRollupRetentionWeek
from services.common.models.query_rollup_session_cube import (
    query_rollup_domains,
    query_rollup_entry_event_pages,
    query_rollup_entry_pages,
    query_rollup_event_names,
    query_rollup_event_pages,
    query_rollup_exit_pages,
    query_rollup_hours,
)
from services.common.models.query_rollup_visit import query_rollup_visits
from services.common.models.query_rollup_week import QueryRollupWeek
from services.common.models.query_session import QuerySession
from services.common.models.replay_chunk import ReplayChunk
from services.common.models.replay_session import ReplaySession

__all__ = [
    "Base",
    "Event",
    "EventSessionUrl",
    "IngestedEvent",
    "Project",
    "QueryGoal",
    "QueryRollupDay",
    "QueryRollupRetention",
    "QueryRollupRetentionWeek",
    "QueryRollupWeek",
    "QuerySession",
    "ReplayChunk",
    "ReplaySession",
    "query_rollup_domains",
    "query_rollup_entry_event_pages",
    "query_rollup_entry_pages",
    "query_rollup_event_names",
    "query_rollup_event_pages",
    "query_rollup_events_counted",
    "query_rollup_events_items",
    "query_rollup_events_staged",
    "query_rollup_exit_items",
    "query_rollup_exit_pages",
    "query_rollup_goal_pair_days",
    "query_rollup_goal_pairs",
    "query_rollup_hours",
    "query_rollup_page_weeks",
    "query_rollup_pages",
    "query_rollup_pending",
    "query_rollup_session_days",
    "query_rollup_sessions_folded",
    "query_rollup_sessions_staged",
    "query_rollup_visits",
]
