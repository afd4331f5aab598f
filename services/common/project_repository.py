"""All SQL about projects. Callers own the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, and_, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.models import Project


@dataclass(frozen=True)
class ProjectRecord:
    project_id: int
    name: str
    allowed_domains: tuple[str, ...]
    timezone: str
    public_key: str
    retention_days: int


_COLUMNS = (
    Project.project_id,
    Project.name,
    Project.allowed_domains,
    Project.timezone,
    Project.public_key,
    Project.retention_days,
)


def _record(row: Row[Any] | Any) -> ProjectRecord:
    return ProjectRecord(
        project_id=row.project_id,
        name=row.name,
        allowed_domains=tuple(row.allowed_domains),
        timezone=row.timezone,
        public_key=row.public_key,
        retention_days=row.retention_days,
    )


async def insert_project(
    connection: AsyncConnection,
    *,
    name: str,
    allowed_domains: list[str],
    timezone: str,
    public_key: str,
    secret_key_hash: str,
    retention_days: int | None = None,
) -> ProjectRecord:
    values: dict[str, object] = {
        "name": name,
        "allowed_domains": allowed_domains,
        "timezone": timezone,
        "public_key": public_key,
        "secret_key_hash": secret_key_hash,
    }
    if retention_days is not None:
        values["retention_days"] = retention_days
    result = await connection.execute(insert(Project).values(**values).returning(*_COLUMNS))
    return _record(result.one())


async def find_by_public_key(connection: AsyncConnection, public_key: str) -> ProjectRecord | None:
    """The project of a current public key, or of a rotated one still in its grace period."""
    result = await connection.execute(
        select(*_COLUMNS).where(
            Project.revoked_at.is_(None),
            or_(
                Project.public_key == public_key,
                and_(Project.previous_public_key == public_key, Project.previous_public_key_expires_at > func.now()),
            ),
        )
    )
    row = result.one_or_none()
    return None if row is None else _record(row)


async def find_by_secret_key_hash(connection: AsyncConnection, secret_key_hash: str) -> ProjectRecord | None:
    result = await connection.execute(
        select(*_COLUMNS).where(Project.secret_key_hash == secret_key_hash, Project.revoked_at.is_(None))
    )
    row = result.one_or_none()
    return None if row is None else _record(row)


async def rotate_keys(
    connection: AsyncConnection,
    project_id: int,
    *,
    public_key: str,
    secret_key_hash: str,
    public_key_grace_s: float,
) -> ProjectRecord | None:
    """New keys; the old public key stays valid for the grace period, the old secret key stops now."""
    result = await connection.execute(
        update(Project)
        .where(Project.project_id == project_id)
        .values(
            previous_public_key=Project.public_key,
            previous_public_key_expires_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, public_key_grace_s),
            public_key=public_key,
            secret_key_hash=secret_key_hash,
        )
        .returning(*_COLUMNS)
    )
    row = result.one_or_none()
    return None if row is None else _record(row)


async def revoke(connection: AsyncConnection, project_id: int) -> bool:
    """Stamps the first revocation (a second keeps it); False when there is no such project.

    Two statements rather than SET revoked_at = COALESCE(revoked_at, now()): Citus refuses a
    function that is not immutable inside COALESCE or CASE in an UPDATE.
    """
    await connection.execute(
        update(Project)
        .where(Project.project_id == project_id, Project.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    exists = await connection.execute(select(Project.project_id).where(Project.project_id == project_id))
    return exists.first() is not None


async def list_projects(connection: AsyncConnection) -> list[ProjectRecord]:
    result = await connection.execute(select(*_COLUMNS).order_by(Project.project_id))
    return [_record(row) for row in result]


async def is_valid_timezone(connection: AsyncConnection, timezone: str) -> bool:
    """Checked against Postgres's own zone list, since that is what dashboards bucket by."""
    result = await connection.execute(
        text("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = :timezone)"),
        {"timezone": timezone},
    )
    return bool(result.scalar_one())


async def all_allowed_domains(connection: AsyncConnection) -> set[str]:
    """Every project's allowed domains: the origins that may post at all (CORS preflight)."""
    result = await connection.execute(text("SELECT DISTINCT unnest(allowed_domains) FROM projects"))
    return set(result.scalars())


async def set_retention_days(connection: AsyncConnection, project_id: int, retention_days: int) -> ProjectRecord | None:
    result = await connection.execute(
        update(Project)
        .where(Project.project_id == project_id)
        .values(retention_days=retention_days)
        .returning(*_COLUMNS)
    )
    row = result.one_or_none()
    return None if row is None else _record(row)


async def set_timezone(connection: AsyncConnection, project_id: int, timezone: str) -> ProjectRecord | None:
    result = await connection.execute(
        update(Project).where(Project.project_id == project_id).values(timezone=timezone).returning(*_COLUMNS)
    )
    row = result.one_or_none()
    return None if row is None else _record(row)
