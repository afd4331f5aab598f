"""Admin operations run by the `sightline` command: direct database access, not through PgBouncer."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from pathlib import Path

from alembic.config import Config

from alembic import command
from services.common import erasure_repository, partition_repository, project_repository, rollup_purge_repository
from services.common.db import admin_transaction
from services.common.keys import generate_project_keys
from services.common.settings import AdminDatabaseSettings

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


class ProjectInputError(ValueError):
    pass


def alembic_config(database_url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def migrate(settings: AdminDatabaseSettings, revision: str = "head") -> list[str]:
    """Brings the schema to revision, then makes sure upcoming event partitions exist."""
    command.upgrade(alembic_config(settings.url), revision)
    return asyncio.run(ensure_partitions(settings))


async def ensure_partitions(settings: AdminDatabaseSettings) -> list[str]:
    today = datetime.now(UTC).date()
    async with admin_transaction(settings) as connection:
        return await partition_repository.ensure_partitions_around(connection, today)


def normalise_domain(domain: str) -> str:
    host = domain.strip().lower().rstrip(".")
    if "://" in host:
        raise ProjectInputError(f"domain {domain!r} must be a host name such as example.com, not a URL")
    host = host.removeprefix("www.")
    if not host or "/" in host or " " in host:
        raise ProjectInputError(f"domain {domain!r} is not a host name")
    return host


async def create_project(
    settings: AdminDatabaseSettings,
    *,
    name: str,
    domains: list[str],
    timezone: str,
    retention_days: int | None = None,
) -> dict[str, object]:
    if not 1 <= len(name) <= 200:
        raise ProjectInputError("name must be 1 to 200 characters")
    allowed_domains = sorted({normalise_domain(domain) for domain in domains})
    keys = generate_project_keys()
    async with admin_transaction(settings) as connection:
        if not await project_repository.is_valid_timezone(connection, timezone):
            raise ProjectInputError(f"unknown timezone {timezone!r}; use an IANA name such as Europe/Berlin")
        project = await project_repository.insert_project(
            connection,
            name=name,
            allowed_domains=allowed_domains,
            timezone=timezone,
            public_key=keys.public_key,
            secret_key_hash=keys.secret_key_hash,
            retention_days=retention_days,
        )
    return {
        "id": project.project_id,
        "name": project.name,
        "domains": list(project.allowed_domains),
        "timezone": project.timezone,
        "publicKey": keys.public_key,
        "secretKey": keys.secret_key,
    }


async def list_projects(settings: AdminDatabaseSettings) -> list[dict[str, object]]:
    async with admin_transaction(settings) as connection:
        projects = await project_repository.list_projects(connection)
    return [
        {
            "id": project.project_id,
            "name": project.name,
            "domains": list(project.allowed_domains),
            "timezone": project.timezone,
            "publicKey": project.public_key,
            "retentionDays": project.retention_days,
        }
        for project in projects
    ]


# Trackers already deployed keep the old public key until their pages are updated.
DEFAULT_PUBLIC_KEY_GRACE_S = 24 * 3600


async def rotate_project_keys(
    settings: AdminDatabaseSettings, project_id: int, public_key_grace_s: float = DEFAULT_PUBLIC_KEY_GRACE_S
) -> dict[str, object] | None:
    """New public and secret keys; None if there is no such project. The secret is shown only here."""
    keys = generate_project_keys()
    async with admin_transaction(settings) as connection:
        project = await project_repository.rotate_keys(
            connection,
            project_id,
            public_key=keys.public_key,
            secret_key_hash=keys.secret_key_hash,
            public_key_grace_s=public_key_grace_s,
        )
    if project is None:
        return None
    return {
        "id": project.project_id,
        "publicKey": keys.public_key,
        "secretKey": keys.secret_key,
        "previousPublicKeyValidForSeconds": public_key_grace_s,
    }


async def revoke_project(settings: AdminDatabaseSettings, project_id: int) -> bool:
    async with admin_transaction(settings) as connection:
        return await project_repository.revoke(connection, project_id)


async def delete_project(settings: AdminDatabaseSettings, project_id: int) -> dict[str, int] | None:
    """Deletes the project and every row of its data, like an erasure of everyone; None if unknown."""
    async with admin_transaction(settings) as connection:
        days = await rollup_purge_repository.rollup_days_through(connection, project_id, date.max)
        await rollup_purge_repository.lock_days(connection, project_id, days)
        deleted = await erasure_repository.delete_project(connection, project_id)
    return deleted if deleted["projects"] else None


async def set_project_timezone(settings: AdminDatabaseSettings, project_id: int, timezone: str) -> bool:
    """Sets a project's timezone and drops its rollups, whose days were the old zone's; False if
    there is no such project. Raises ProjectInputError for a zone Postgres does not know."""
    async with admin_transaction(settings) as connection:
        if not await project_repository.is_valid_timezone(connection, timezone):
            raise ProjectInputError(f"unknown timezone {timezone!r}; use an IANA name such as Europe/Berlin")
        days = await rollup_purge_repository.rollup_days_through(connection, project_id, date.max)
        # Waits for a build in flight, which would otherwise write an old-zone day back.
        await rollup_purge_repository.lock_days(connection, project_id, days)
        project = await project_repository.set_timezone(connection, project_id, timezone)
        if project is None:
            return False
        await rollup_purge_repository.forget_every_day(connection, project_id)
    return True
