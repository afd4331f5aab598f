"""Alembic environment: the shared metadata, a direct (non-PgBouncer) async connection."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from sqlalchemy.engine import Connection

from alembic import context
from services.common.db import create_admin_engine
from services.common.models import Base
from services.common.settings import AdminDatabaseSettings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _admin_settings() -> AdminDatabaseSettings:
    url = config.attributes.get("database_url") or context.get_x_argument(as_dictionary=True).get("url")
    return AdminDatabaseSettings(url=url) if url else AdminDatabaseSettings.from_env()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_server_default=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_admin_engine(_admin_settings())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_admin_settings().url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
