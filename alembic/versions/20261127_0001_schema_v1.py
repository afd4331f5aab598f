"""Schema v1: projects, day-partitioned events, ingest idempotency, replay sessions and chunks.

Every table carries project_id and every primary key starts with it, so events and replays
can later be distributed by project on Citus. Only identity keys are created here: indexes
for the dashboards are chosen by measurement, in their own migrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("project_id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("allowed_domains", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("timezone", sa.Text(), server_default="UTC", nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("secret_key_hash", sa.Text(), nullable=False),
        sa.Column("retention_days", sa.Integer(), server_default="395", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("retention_days > 0", name=op.f("ck_projects_retention_days_positive")),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name=op.f("ck_projects_name_length")),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_projects")),
        sa.UniqueConstraint("public_key", name=op.f("uq_projects_public_key")),
        sa.UniqueConstraint("secret_key_hash", name=op.f("uq_projects_secret_key_hash")),
    )

    op.create_table(
        "events",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_uuid", sa.Uuid(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("distinct_id", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("referrer", sa.Text(), nullable=True),
        sa.Column("referrer_domain", sa.Text(), nullable=True),
        sa.Column("utm_source", sa.Text(), nullable=True),
        sa.Column("utm_medium", sa.Text(), nullable=True),
        sa.Column("utm_campaign", sa.Text(), nullable=True),
        sa.Column("utm_term", sa.Text(), nullable=True),
        sa.Column("utm_content", sa.Text(), nullable=True),
        sa.Column("browser", sa.Text(), nullable=True),
        sa.Column("browser_version", sa.Text(), nullable=True),
        sa.Column("os", sa.Text(), nullable=True),
        sa.Column("os_version", sa.Text(), nullable=True),
        sa.Column("device_type", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("is_bot", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("properties", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("project_id", "occurred_at", "event_uuid", name=op.f("pk_events")),
        postgresql_partition_by="RANGE (occurred_at)",
    )
    # Catches rows for days that have no partition yet, so ingest never fails on a
    # missing partition; see services/common/partition_repository.py.
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")

    op.create_table(
        "ingested_events",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("event_uuid", sa.Uuid(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "event_uuid", name=op.f("pk_ingested_events")),
    )

    op.create_table(
        "replay_sessions",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("distinct_id", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "duration_ms",
            sa.BigInteger(),
            sa.Computed("(EXTRACT(EPOCH FROM (ended_at - started_at)) * 1000)::bigint", persisted=True),
            nullable=False,
        ),
        sa.Column("active_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("click_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("page_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_url", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("browser", sa.Text(), nullable=True),
        sa.Column("os", sa.Text(), nullable=True),
        sa.Column("device_type", sa.Text(), nullable=True),
        sa.Column("chunk_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "session_id", name=op.f("pk_replay_sessions")),
    )

    op.create_table(
        "replay_chunks",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("first_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("has_full_snapshot", sa.Boolean(), nullable=False),
        sa.Column("content_encoding", sa.Text(), nullable=False),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_replay_chunks_seq_non_negative")),
        sa.CheckConstraint(
            "content_encoding IN ('gzip', 'identity')", name=op.f("ck_replay_chunks_content_encoding_known")
        ),
        sa.PrimaryKeyConstraint("project_id", "session_id", "seq", name=op.f("pk_replay_chunks")),
    )
    # The bytes are already gzip: EXTERNAL stores them out of line without another
    # (pointless, CPU-costly) compression attempt by Postgres.
    op.execute("ALTER TABLE replay_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("replay_chunks")
    op.drop_table("replay_sessions")
    op.drop_table("ingested_events")
    op.drop_table("events")  # drops every partition with it
    op.drop_table("projects")
