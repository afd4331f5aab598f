"""Least privilege: the services' role (through PgBouncer) reads and writes rows, nothing else.

The owner (``db.admin``, direct) keeps the schema: migrations, retention, partitions.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli.stack import DATABASE_USER, SERVICE_DATABASE_USER
from services.common import partition_repository

INSUFFICIENT_PRIVILEGE = "42501"
# Far outside the days ingest, retention and the other tests touch; dropped again at the end.
LATER_DAY = date(2099, 1, 1)


async def _public_tables(admin_engine: AsyncEngine) -> list[str]:
    async with admin_engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                " AND relkind IN ('r', 'p') ORDER BY relname"
            )
        )
        return list(result.scalars())


async def _refused(engine: AsyncEngine, statement: str) -> str:
    """The SQLSTATE the service role's statement fails with (its transaction rolled back)."""
    with pytest.raises(DBAPIError) as raised:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    return str(getattr(raised.value.orig, "sqlstate", None))


async def test_the_services_connect_as_a_role_that_owns_nothing(engine: AsyncEngine, admin_engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        role = (
            await connection.execute(
                text(
                    "SELECT current_user, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls,"
                    " pg_has_role(current_user, :owner, 'MEMBER')"
                    " FROM pg_roles WHERE rolname = current_user"
                ),
                {"owner": DATABASE_USER},
            )
        ).one()
    assert tuple(role) == (SERVICE_DATABASE_USER, False, False, False, False, False)
    async with admin_engine.connect() as connection:
        owned = await connection.execute(
            text(
                "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = :role)"
                " UNION ALL SELECT count(*) FROM pg_namespace"
                " WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = :role)"
            ),
            {"role": SERVICE_DATABASE_USER},
        )
        assert list(owned.scalars()) == [0, 0]
        # The other way round: the owner watches the services' sessions (pg_stat_activity).
        watched = await connection.execute(
            text("SELECT pg_has_role(current_user, :role, 'MEMBER')"), {"role": SERVICE_DATABASE_USER}
        )
        assert watched.scalar_one() is True


async def test_the_service_role_cannot_drop_alter_or_truncate_any_table(
    engine: AsyncEngine, admin_engine: AsyncEngine
) -> None:
    tables = await _public_tables(admin_engine)
    # Every table the migrations made, the partitions `sightline migrate` made, and Alembic's own.
    assert {"projects", "events", "events_default", "replay_chunks", "alembic_version"} <= set(tables)
    assert any(name.startswith("events_p") for name in tables)
    refusals = {}
    for table in tables:
        refusals[table] = [
            await _refused(engine, f"DROP TABLE {table}"),
            await _refused(engine, f"ALTER TABLE {table} ADD COLUMN intruder int"),
            await _refused(engine, f"TRUNCATE {table}"),
        ]
    assert refusals == {table: [INSUFFICIENT_PRIVILEGE] * 3 for table in tables}
    assert set(await _public_tables(admin_engine)) == set(tables)


async def test_the_service_role_cannot_create_tables_or_partitions(engine: AsyncEngine) -> None:
    assert [
        await _refused(engine, "CREATE TABLE intruder (id int)"),
        await _refused(engine, "CREATE TEMPORARY TABLE intruder (id int)"),
        await _refused(engine, "CREATE SCHEMA intruder"),
        await _refused(
            engine,
            "CREATE TABLE events_p20990102 PARTITION OF events"
            " FOR VALUES FROM ('2099-01-02 00:00+00') TO ('2099-01-03 00:00+00')",
        ),
        await _refused(engine, "CREATE INDEX intruder ON events (name)"),
    ] == [INSUFFICIENT_PRIVILEGE] * 5


async def test_the_service_role_reads_projects_but_cannot_change_them_or_alembics_table(
    engine: AsyncEngine, project: dict[str, object]
) -> None:
    async with engine.connect() as connection:
        name = await connection.execute(text("SELECT name FROM projects WHERE project_id = :id"), {"id": project["id"]})
        assert name.scalar_one() == project["name"]
    project_id = int(str(project["id"]))
    assert [
        await _refused(
            engine, f"UPDATE projects SET allowed_domains = '{{evil.example}}' WHERE project_id = {project_id}"
        ),
        await _refused(engine, f"DELETE FROM projects WHERE project_id = {project_id}"),
        await _refused(engine, "SELECT * FROM alembic_version"),
    ] == [INSUFFICIENT_PRIVILEGE] * 3


async def test_rows_reach_a_partition_the_owner_creates_later_through_events(
    engine: AsyncEngine, admin_engine: AsyncEngine, project: dict[str, object]
) -> None:
    partition = partition_repository.partition_name(LATER_DAY)
    async with admin_engine.begin() as connection:
        assert await partition_repository.ensure_event_partitions(connection, LATER_DAY, LATER_DAY) == [partition]
    try:
        event_uuid = uuid.uuid4()
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO events (project_id, occurred_at, event_uuid, name, distinct_id, session_id, url,"
                    " domain, path) VALUES (:project_id, :occurred_at, :uuid, 'pageview', 'v', 's',"
                    " 'https://example.com/', 'example.com', '/')"
                ),
                {"project_id": project["id"], "occurred_at": datetime(2099, 1, 1, 12, tzinfo=UTC), "uuid": event_uuid},
            )
        async with engine.begin() as connection:
            # Read straight from the new partition: the owner's default privileges cover it.
            stored = await connection.execute(text(f"SELECT event_uuid FROM {partition}"))
            assert list(stored.scalars()) == [event_uuid]
            updated = await connection.execute(
                text("UPDATE events SET name = 'renamed' WHERE project_id = :id"), {"id": project["id"]}
            )
            assert updated.rowcount == 1
            deleted = await connection.execute(text("DELETE FROM events WHERE project_id = :id"), {"id": project["id"]})
            assert deleted.rowcount == 1
    finally:
        async with admin_engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE {partition}"))
