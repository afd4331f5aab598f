"""A session day holds each page and event name once, with a count per name (issue #15).

Migration 0850 gave each session day (``query_rollup_session_days``) the paths of its events and
the name of each of its non-pageview events, one element per event: the Goals, Custom events
and Top pages cards under a visit or exit-page chip unnest them. A merge appended every batch's
paths and names to the arrays it already held, so a session day grew by an element per custom
event (and by its batch's paths, repeated across batches) for as long as the session went on,
and each merge read, concatenated and wrote the whole of it again (TOAST-compressed past ~2 kB).
A merge's cost grew with the length of the sessions it touched, not with what arrived; every
reader unnested one element per event.

Now ``pages`` holds each path once and ``event_names`` each name once (in byte order), and the new
``event_counts`` holds the events of each name, element by element: a row as long as the
session day's distinct pages and names. A merge whose batch brings no new page or name keeps
the arrays as they are and adds the counts (services/query/rollup_repository.py,
``_SESSION_DAYS_MERGE``); readers take each name's count instead of counting its elements.

Every row is rewritten once here from its arrays: the same pages as a set, the same events per
name.

Revision ID: 1210
Revises: 1200
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "1210"
down_revision: str | None = "1200"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def upgrade() -> None:
    if citus_installed():
        # The DDL and the multi-shard write below on one connection per worker (as in 0720).
        op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
    op.add_column(
        "query_rollup_session_days",
        sa.Column("event_counts", postgresql.ARRAY(sa.BigInteger()), nullable=False, server_default="{}"),
    )
    op.execute(
        "UPDATE query_rollup_session_days SET"
        ' pages = ARRAY(SELECT x FROM unnest(pages) AS x GROUP BY x ORDER BY x COLLATE "C"),'
        ' event_names = ARRAY(SELECT x FROM unnest(event_names) AS x GROUP BY x ORDER BY x COLLATE "C"),'
        ' event_counts = ARRAY(SELECT count(*) FROM unnest(event_names) AS x GROUP BY x ORDER BY x COLLATE "C")'
    )


def downgrade() -> None:
    # Each name repeated as many times as its count, as before.
    op.execute(
        "UPDATE query_rollup_session_days SET event_names = ARRAY(SELECT u.name FROM"
        " unnest(event_names, event_counts) AS u(name, n) CROSS JOIN generate_series(1, u.n) ORDER BY u.name)"
    )
    op.drop_column("query_rollup_session_days", "event_counts")
