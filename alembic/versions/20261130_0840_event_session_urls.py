"""Each session's distinct URLs in a small table of their own; the trigram index on every event's URL goes.

The player's session list filters on "URL contains" and on a page (services/replay/repository.py).
Since 0610 both were served by a GIN trigram index on lower(url) of every event: per 8-event
request it cost Postgres ~0.18 ms of CPU (a third of the writer's statement) and ~11 kB of
its ~20 kB of WAL (`tools.bench.ingest_postgres`, docs/benchmarks.md), though a visitor sends
the same few URLs again and again. Now the writer's statement also records each (session,
visitor, URL) once, with ON CONFLICT DO NOTHING, in ``event_session_urls``, which carries the
trigram index instead: an event whose URL its session already has writes no index entry.

- The key is (project_id, session_id, distinct_id, url_hash), url_hash = md5(url) as a uuid: a
  URL may be 2,048 characters, too long for a btree entry. distinct_id is in the key so that
  erasure removes exactly the person's rows of a session shared with another id, as it removes
  exactly their events.
- first_seen is the first event's occurred_at: retention removes the rows whose first visit is
  older than its cutoff and puts back those a later, kept event of the session still holds
  (services/common/retention_repository.py). Indexed with project_id: the session list searches
  the newest sessions first, in windows of a day and a week (what partition pruning did on
  events), and retention finds the expired rows by it. It grows with new URLs only, like the rest.
- On Citus the table is distributed by project_id, co-located with events.
- Existing events are copied in (one grouped INSERT ... SELECT; on Citus pushed down to each
  shard), before the old index goes.

Revision ID: 0840
Revises: 0820
Create Date: 2026-11-30
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0840"
down_revision: str | None = "0820"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "event_session_urls"
URLS_INDEX = "ix_event_session_urls_url_trgm"
FIRST_SEEN_INDEX = "ix_event_session_urls_project_id_first_seen"
EVENTS_INDEX = "ix_events_url_trgm"

log = logging.getLogger("alembic.runtime.migration")


def citus_installed() -> bool:
    return bool(
        op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')")).scalar_one()
    )


def trigrams_installed() -> bool:
    installed = op.get_bind().execute(sa.text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_trgm')"))
    return bool(installed.scalar_one())


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("distinct_id", sa.Text(), nullable=False),
        sa.Column("url_hash", sa.Uuid(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "project_id", "session_id", "distinct_id", "url_hash", name=op.f("pk_event_session_urls")
        ),
    )
    if citus_installed():
        op.execute(f"SELECT create_distributed_table('{TABLE}', 'project_id', colocate_with => 'events')")
    op.execute(
        f"INSERT INTO {TABLE} (project_id, session_id, distinct_id, url_hash, url, path, first_seen)"
        " SELECT project_id, session_id, distinct_id, md5(url)::uuid, min(url), min(path), min(occurred_at)"
        " FROM events GROUP BY project_id, session_id, distinct_id, md5(url)::uuid"
    )
    op.create_index(FIRST_SEEN_INDEX, TABLE, ["project_id", "first_seen"])
    if trigrams_installed():
        op.execute(f"CREATE INDEX {URLS_INDEX} ON {TABLE} USING gin (lower(url) gin_trgm_ops)")
    else:
        log.warning("pg_trgm is not installed (postgresql-contrib): urlContains will scan; see docs/pages.md")
    op.execute(f"DROP INDEX IF EXISTS {EVENTS_INDEX}")


def downgrade() -> None:
    if trigrams_installed():
        op.execute(f"CREATE INDEX IF NOT EXISTS {EVENTS_INDEX} ON events USING gin (lower(url) gin_trgm_ops)")
    op.drop_table(TABLE)
