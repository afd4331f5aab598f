"""Replay session indexes: the session list's order, and a person's sessions.

Measured with EXPLAIN (ANALYZE, BUFFERS) on 3 projects x 200,000 sessions
(`python -m tools.probes.replay_indexes`, two runs on the shared 2-core dev machine):
the list's first page went from a scan of the project's whole primary key plus a top-N sort
(~42,000 buffers, 100-135 ms) to a backward index-only scan of 5 buffers (0.12-0.17 ms); a
later keyset page from 100-161 ms to 0.11-0.13 ms; finding a person's sessions for a GDPR
deletion from 65-86 ms to under 0.1 ms.

Built CONCURRENTLY, outside a transaction, so ingest keeps writing sessions meanwhile.

Revision ID: 0200
Revises: 0101
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0200"
down_revision: str | None = "0101"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            op.f("ix_replay_sessions_project_id_started_at_session_id"),
            "replay_sessions",
            ["project_id", "started_at", "session_id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.create_index(
            op.f("ix_replay_sessions_project_id_distinct_id"),
            "replay_sessions",
            ["project_id", "distinct_id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            op.f("ix_replay_sessions_project_id_distinct_id"),
            table_name="replay_sessions",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.drop_index(
            op.f("ix_replay_sessions_project_id_started_at_session_id"),
            table_name="replay_sessions",
            postgresql_concurrently=True,
            if_exists=True,
        )
