"""Replay session counters as bigint: a session's sums cannot overflow.

click_count, page_count and chunk_count were 32-bit. A session's counters are sums over its
chunks, and a client can send as many chunks as it likes (each up to 50,000 rrweb events), so
pushing a session past 2^31 made every later chunk of it fail. As bigint the sums would need
more chunks than any client can send. The type change rewrites replay_sessions under an
ACCESS EXCLUSIVE lock: apply it while ingest is stopped or quiet.

Revision ID: 0310
Revises: 0300
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0310"
down_revision: str | None = "0300"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ("click_count", "page_count", "chunk_count")


def upgrade() -> None:
    for column in COUNTERS:
        op.alter_column("replay_sessions", column, type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    # Values past 2^31 - 1 cannot go back; they are capped rather than lost.
    for column in COUNTERS:
        op.alter_column(
            "replay_sessions",
            column,
            type_=sa.Integer(),
            existing_type=sa.BigInteger(),
            postgresql_using=f"LEAST({column}, 2147483647)::integer",
        )
