"""What the incremental rollup refresher keeps besides the cubes (migration 0730).

Owned by the query service (services/query/rollup_repository.py); purged with their days by
services/common/rollup_purge_repository.py.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

from services.common.models.base import Base
from services.common.models.query_rollup_visit import Hll

# Per inserting statement and project, the keys of its new non-bot events and their local days
# (a trigger writes them; `days` and `created_at` since 0800); the refresher takes them. A day
# touched by a row older than the staleness allowed is not read from its rollup. No key: rows
# are only ever added and taken whole.
query_rollup_pending = Table(
    "query_rollup_pending",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("occurred_at", ARRAY(DateTime(timezone=True)), nullable=False),
    Column("event_uuid", ARRAY(Uuid), nullable=False),
    Column("days", ARRAY(Date), nullable=False, server_default=text("'{}'::date[]")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_query_rollup_pending_project_id", "project_id"),
)

# Each session as folded into its start day's rollup rows, with its visitor (1200: the retention
# cohorts are made of them, by the (project_id, distinct_id, day) index).
query_rollup_sessions_folded = Table(
    "query_rollup_sessions_folded",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("day", Date, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("first_uuid", Uuid, nullable=False),
    Column("entry_uuid", Uuid),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("pageviews", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("entry_page", Text),
    Column("exit_page", Text),
    Column("referrer", Text),
    Column("utm_source", Text),
    Column("utm_medium", Text),
    Column("utm_campaign", Text),
    Column("country", Text),
    Column("browser", Text),
    Column("os", Text),
    Column("device", Text),
    Column("pages", ARRAY(Text), nullable=False),
    Column("domains", ARRAY(Text), nullable=False),
    Column("event_names", ARRAY(Text), nullable=False),
    Column("distinct_id", Text, nullable=False),
    PrimaryKeyConstraint("project_id", "session_id", name="pk_query_rollup_sessions_folded"),
    Index("ix_query_rollup_sessions_folded_project_id_day", "project_id", "day"),
    Index("ix_query_rollup_sessions_folded_project_id_distinct_id_day", "project_id", "distinct_id", "day"),
)

# The sessions a merge or a day rebuild reads, staged once inside a refresh's transaction
# (migration 0760): every cube and query_rollup_sessions_folded are written from them. UNLOGGED
# (1160): its rows never outlive the transaction.
query_rollup_sessions_staged = Table(
    "query_rollup_sessions_staged",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("distinct_id", Text),
    Column("day", Date, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("first_uuid", Uuid, nullable=False),
    Column("entry_uuid", Uuid),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("pageviews", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("entry_page", Text),
    Column("exit_page", Text),
    Column("referrer", Text),
    Column("utm_source", Text),
    Column("utm_medium", Text),
    Column("utm_campaign", Text),
    Column("country", Text),
    Column("browser", Text),
    Column("os", Text),
    Column("device", Text),
    Column("pages", ARRAY(Text), nullable=False),
    Column("domains", ARRAY(Text), nullable=False),
    Column("event_names", ARRAY(Text), nullable=False),
    PrimaryKeyConstraint("project_id", "session_id", name="pk_query_rollup_sessions_staged"),
    prefixes=["UNLOGGED"],
)

# The events a merge takes, read once from events by their keys (migration 0820); like the staged
# sessions, its rows live only inside the refresh's transaction; UNLOGGED (1160), no index (1170:
# every reader takes every row of the project).
query_rollup_events_staged = Table(
    "query_rollup_events_staged",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("day", Date, nullable=False),
    Column("name", Text, nullable=False),
    Column("distinct_id", Text, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("domain", Text, nullable=False),
    prefixes=["UNLOGGED"],
)

# The staged events counted per day, session, visitor, domain and hour (migration 1100); UNLOGGED,
# its rows live only inside the refresh's transaction; no index (1170), as the staged events.
query_rollup_events_counted = Table(
    "query_rollup_events_counted",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("distinct_id", Text, nullable=False),
    Column("domain", Text, nullable=False),
    Column("hour", SmallInteger, nullable=False),
    Column("pageviews", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    prefixes=["UNLOGGED"],
)

# The staged events counted per day, session, visitor and path, and per day, session, visitor
# and name (migration 1220): a row holds one of the two, the other NULL. UNLOGGED, no index, its
# rows live only inside the refresh's transaction, as the counted events.
query_rollup_events_items = Table(
    "query_rollup_events_items",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("distinct_id", Text, nullable=False),
    Column("path", Text),
    Column("name", Text),
    Column("pageviews", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    CheckConstraint("(path IS NULL) <> (name IS NULL)", name="path_or_name"),
    prefixes=["UNLOGGED"],
)

# Per day, session and visitor: the pageviews and events folded, with the session's exit page and
# visit as folded (migration 0820): a merge moves a session's rows between exit pages by them.
query_rollup_session_days = Table(
    "query_rollup_session_days",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("distinct_id", Text, nullable=False),
    Column("pageviews", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("exit_page", Text),
    Column("referrer", Text),
    Column("utm_source", Text),
    Column("utm_medium", Text),
    Column("utm_campaign", Text),
    Column("country", Text),
    Column("browser", Text),
    Column("os", Text),
    Column("device", Text),
    # Migration 0850: the day's paths and the names of its non-pageview events; since 1210 each
    # path once and each name once (byte order), with event_counts the events of each name.
    Column("pages", ARRAY(Text)),
    Column("event_names", ARRAY(Text)),
    Column("event_counts", ARRAY(BigInteger), nullable=False, server_default="{}"),
    PrimaryKeyConstraint("project_id", "day", "session_id", "distinct_id", name="pk_query_rollup_session_days"),
    Index("ix_query_rollup_session_days_project_id_day_exit_page", "project_id", "day", "exit_page"),
    # Migration 0920: each visit column, so two visit chips read only the session days of both
    # (a BitmapAnd of their indexes), not every session day of the range.
    *(
        Index(f"ix_query_rollup_session_days_project_id_day_{name}", "project_id", "day", name)
        for name in ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")
    ),
)


# Per day and exit page (migration 0900): each page (kind 'p') and event name (kind 'e', the
# pageviews as 'pageview') of the session days under that exit page, their visitors as a sketch
# and (event names) their events. Written from the session days only; the Goals, Custom events
# and Top pages cards under an exit-page chip read it.
query_rollup_exit_items = Table(
    "query_rollup_exit_items",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    Column("exit_page", Text),
    Column("kind", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("visitors", Hll, nullable=False),
    Column("events", BigInteger, nullable=False),
    # In the order a query reads them: an exit page's rows of the listed values (the goals).
    Index(
        "ux_query_rollup_exit_items_group",
        "project_id",
        "exit_page",
        "kind",
        "value",
        "day",
        unique=True,
        postgresql_nulls_not_distinct=True,
    ),
    # The refresher's deletes: a day's rows, a day's exit pages'.
    Index("ix_query_rollup_exit_items_project_id_day_exit_page", "project_id", "day", "exit_page"),
)


# Per day (migration 1000): for each page of the project's saved page goals and each pair of
# visit dimensions (`grain`, the cubes' GROUPING() bits; the other visit columns NULL), a visitor
# sketch of the session days holding the page. Written from the session days only; the Goals
# card under two visit chips reads it while its day's marker below still matches.
query_rollup_goal_pairs = Table(
    "query_rollup_goal_pairs",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    Column("grain", Integer, nullable=False),
    Column("page", Text, nullable=False),
    *(
        Column(name, Text)
        for name in ("referrer", "utm_source", "utm_medium", "utm_campaign", "country", "browser", "os", "device")
    ),
    Column("visitors", Hll, nullable=False),
    # A query reads one grain's rows of the listed pages per day; the refresher deletes a day's.
    Index("ix_query_rollup_goal_pairs_project_id_grain_page_day", "project_id", "grain", "page", "day"),
    Index("ix_query_rollup_goal_pairs_project_id_day", "project_id", "day"),
)

# Per day (migration 1000): the day's query_rollup_days.built_at and the goal pages when its
# goal pairs were made; they answer while both still hold.
query_rollup_goal_pair_days = Table(
    "query_rollup_goal_pair_days",
    Base.metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    Column("built_at", DateTime(timezone=True), nullable=False),
    Column("pages", ARRAY(Text), nullable=False),
    PrimaryKeyConstraint("project_id", "day", name="pk_query_rollup_goal_pair_days"),
)
