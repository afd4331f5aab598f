"""Project keys: rotation with a grace period for the old public key, and revocation.

A rotated public key keeps working until ``previous_public_key_expires_at`` so trackers already
deployed on pages keep sending while the pages are updated; a rotated secret key stops at once
(only its hash is stored, and it is replaced). ``revoked_at`` stops every key of the project.
``projects`` is a handful of rows: plain DDL in the migration's transaction.

Revision ID: 0500
Revises: 0400
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0500"
down_revision: str | None = "0400"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("previous_public_key", sa.Text(), nullable=True))
    op.add_column("projects", sa.Column("previous_public_key_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("projects", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_unique_constraint(op.f("uq_projects_previous_public_key"), "projects", ["previous_public_key"])


def downgrade() -> None:
    op.drop_constraint(op.f("uq_projects_previous_public_key"), "projects", type_="unique")
    op.drop_column("projects", "revoked_at")
    op.drop_column("projects", "previous_public_key_expires_at")
    op.drop_column("projects", "previous_public_key")
