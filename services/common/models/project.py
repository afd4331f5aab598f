from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Identity, Integer, Text, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from services.common.models.base import Base


class Project(Base):
    """A tracked site or app: the tenant every other row belongs to.

    In a Citus deployment this is a reference table (copied to every node), so its
    cross-tenant unique keys on the ingest key and the secret key's hash stay valid there;
    all other tables are distributed by ``project_id``.
    """

    __tablename__ = "projects"

    project_id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    # Hosts (lower case, no "www.") whose pages may send data with the public key.
    allowed_domains: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    # IANA name; dashboards bucket days and weeks in this zone.
    timezone: Mapped[str] = mapped_column(Text, server_default="UTC")
    # Embedded in pages, so it only lets a tracker write.
    public_key: Mapped[str] = mapped_column(Text, unique=True)
    # SHA-256 of the secret read key; the key itself is shown once, at creation.
    secret_key_hash: Mapped[str] = mapped_column(Text, unique=True)
    # After `sightline project rotate-keys`: the replaced public key, accepted until
    # previous_public_key_expires_at so trackers already on pages keep working meanwhile.
    previous_public_key: Mapped[str | None] = mapped_column(Text, unique=True)
    previous_public_key_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # `sightline project revoke`: no key of the project is accepted any more.
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retention_days: Mapped[int] = mapped_column(Integer, server_default="395")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("retention_days > 0", name="retention_days_positive"),
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name_length"),
    )
