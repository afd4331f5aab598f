"""Trigram indexes for the session list's "URL contains" filter.

``urlContains`` is a case-insensitive substring of the session's first URL or of any URL its
events name. A btree cannot serve a substring; pg_trgm's GIN operator class serves
``lower(url) LIKE '%needle%'`` for needles of 3 or more characters. Before it, a filter that
matched nothing read every session of the project and, per session, the project's events
(10 s and a statement timeout at 5,000 sessions).

pg_trgm ships with Postgres's contrib package (postgresql-contrib on Debian, in the official
images). Where it is not installed, the extension and the indexes are skipped with a warning:
the filter still answers, by scanning, under the statement timeout (503 query_timeout).

``events`` is partitioned: as in 0400, the parent's index is created ON ONLY the parent, each
partition's is built CONCURRENTLY and attached, and later partitions get theirs automatically.

Revision ID: 0610
Revises: 0600
Create Date: 2026-11-30
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0610"
down_revision: str | None = "0600"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SESSIONS_INDEX = "ix_replay_sessions_first_url_trgm"
EVENTS_INDEX = "ix_events_url_trgm"

log = logging.getLogger("alembic.runtime.migration")


def _trigrams_available() -> bool:
    available = op.get_bind().execute(
        sa.text("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_trgm')")
    )
    return bool(available.scalar_one())


def upgrade() -> None:
    if not _trigrams_available():
        log.warning("pg_trgm is not installed (postgresql-contrib): urlContains will scan; see docs/pages.md")
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute(f"CREATE INDEX IF NOT EXISTS {EVENTS_INDEX} ON ONLY events USING gin (lower(url) gin_trgm_ops)")
    with op.get_context().autocommit_block():
        op.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {SESSIONS_INDEX}"
            " ON replay_sessions USING gin (lower(first_url) gin_trgm_ops)"
        )
        partitions = (
            op.get_bind()
            .execute(
                sa.text(
                    "SELECT child.relname FROM pg_inherits"
                    " JOIN pg_class parent ON parent.oid = pg_inherits.inhparent"
                    " JOIN pg_class child ON child.oid = pg_inherits.inhrelid"
                    " WHERE parent.relname = 'events' AND parent.relnamespace = 'public'::regnamespace"
                    " ORDER BY 1"
                )
            )
            .scalars()
            .all()
        )
        for partition in partitions:
            index = f"{partition}_url_trgm_idx"
            op.execute(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{index}" ON "{partition}"'
                " USING gin (lower(url) gin_trgm_ops)"
            )
            attached = op.get_bind().execute(
                sa.text(
                    "SELECT EXISTS (SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " JOIN pg_class p ON p.oid = i.inhparent WHERE c.relname = :index AND p.relname = :parent)"
                ),
                {"index": index, "parent": EVENTS_INDEX},
            )
            if not attached.scalar_one():
                op.execute(f'ALTER INDEX {EVENTS_INDEX} ATTACH PARTITION "{index}"')


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {EVENTS_INDEX}")
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {SESSIONS_INDEX}")
    # The extension stays: other objects may use it, and it holds no data.
