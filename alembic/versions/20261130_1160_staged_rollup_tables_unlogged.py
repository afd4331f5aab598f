"""The staged events and sessions of a refresh are UNLOGGED, as the counted events are (issue #15).

``query_rollup_events_staged`` (0820) and ``query_rollup_sessions_staged`` (0760) hold rows only
inside a refresh's transaction: written, read and deleted before it commits. Every row still went
to the WAL twice (its insert with its index entries, then its delete): under the 5000-visitor
load the staging of ~800,000 events was the refresher's largest statement, 3.1 of its 13.1 s of
CPU (docs/benchmarks.md). As ``query_rollup_events_counted`` (1100), they no longer write WAL;
crash recovery empties them, which loses nothing (no transaction that wrote them committed rows
in them), and a standby has no copy, which none of its queries reads.

Citus propagates SET UNLOGGED to the shards (since 10.0). Its non-blocking (logical) shard moves
refuse unlogged tables; ``sightline citus`` moves shards with block_writes, as it did with 1100.

Revision ID: 1160
Revises: 1140
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "1160"
down_revision: str | None = "1140"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("query_rollup_events_staged", "query_rollup_sessions_staged")


def upgrade() -> None:
    # Each is empty outside a refresh: the rewrite is of an empty table (and its index).
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} SET UNLOGGED")


def downgrade() -> None:
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} SET LOGGED")
