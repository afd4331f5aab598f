"""The schema exists only as Alembic migrations; they go up, down and up again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from alembic import command
from services.cli import admin
from services.common import partition_repository
from services.common.db import create_admin_engine
from services.common.models import Base
from services.common.rollup_purge_repository import SESSION_CUBE_TABLES
from services.common.settings import AdminDatabaseSettings
from tests.harness import DatabaseHarness

T = TypeVar("T")


@pytest.fixture
def scratch_database(db: DatabaseHarness) -> Iterator[AdminDatabaseSettings]:
    """An empty database of its own, so going down to base disturbs no other test."""
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    db.postgres.psql(f"CREATE DATABASE {name} OWNER sightline")
    try:
        yield AdminDatabaseSettings(url=db.admin.url.rsplit("/", 1)[0] + f"/{name}")
    finally:
        db.postgres.psql(f"DROP DATABASE {name} WITH (FORCE)")


def _with_connection(settings: AdminDatabaseSettings, work: Callable[[Connection], T]) -> T:
    """Runs a synchronous inspection on a direct connection (these tests are not async,
    because Alembic's env.py runs its own event loop)."""

    async def run() -> T:
        engine = create_admin_engine(settings)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _tables(settings: AdminDatabaseSettings) -> set[str]:
    return _with_connection(settings, lambda connection: set(inspect(connection).get_table_names()))


def test_upgrade_downgrade_upgrade(scratch_database: AdminDatabaseSettings) -> None:
    config = admin.alembic_config(scratch_database.url)
    command.upgrade(config, "head")
    after_first_upgrade = _tables(scratch_database)
    assert {
        "projects",
        "events",
        "ingested_events",
        "replay_sessions",
        "replay_chunks",
    } <= after_first_upgrade

    command.downgrade(config, "base")
    assert _tables(scratch_database) == {"alembic_version"}

    command.upgrade(config, "head")
    assert _tables(scratch_database) == after_first_upgrade


def test_models_match_the_migrations(scratch_database: AdminDatabaseSettings) -> None:
    command.upgrade(admin.alembic_config(scratch_database.url), "head")

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_server_default": True})
        return list(compare_metadata(context, Base.metadata))

    differences = _with_connection(scratch_database, compare)
    # Partitions are made at run time and are not models, nor are their copies of the parent's indexes.
    differences = [
        d
        for d in differences
        if not (d[0] == "remove_table" and d[1].name.startswith("events_"))
        and not (d[0] == "remove_index" and d[1].table.name.startswith("events_"))
    ]
    assert differences == []


def test_the_person_index_covers_partitions_made_before_and_after_it(scratch_database: AdminDatabaseSettings) -> None:
    """events is partitioned: 0400 builds each partition's index concurrently and attaches it."""
    config = admin.alembic_config(scratch_database.url)
    command.upgrade(config, "0300")

    async def add_partitions(first: date, last: date) -> None:
        engine = create_admin_engine(scratch_database)
        try:
            async with engine.begin() as connection:
                await partition_repository.ensure_event_partitions(connection, first, last)
        finally:
            await engine.dispose()

    asyncio.run(add_partitions(date(2026, 1, 1), date(2026, 1, 2)))
    command.upgrade(config, "head")
    asyncio.run(add_partitions(date(2026, 1, 3), date(2026, 1, 3)))

    def person_indexes(connection: Connection) -> list[tuple[str, str, bool]]:
        rows = connection.execute(
            text(
                "SELECT t.relname, i.relname, x.indisvalid FROM pg_index x"
                " JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
                " WHERE t.relname LIKE 'events%' AND pg_get_indexdef(x.indexrelid) LIKE '%(project_id, distinct_id)'"
                " ORDER BY 1"
            )
        )
        return [(row[0], row[1], row[2]) for row in rows]

    assert _with_connection(scratch_database, person_indexes) == [
        ("events", "ix_events_project_id_distinct_id", True),
        ("events_default", "events_default_project_id_distinct_id_idx", True),
        ("events_p20260101", "events_p20260101_project_id_distinct_id_idx", True),
        ("events_p20260102", "events_p20260102_project_id_distinct_id_idx", True),
        ("events_p20260103", "events_p20260103_project_id_distinct_id_idx", True),
    ]


def test_the_funnel_sample_index_covers_partitions_made_before_and_after_it(
    scratch_database: AdminDatabaseSettings,
) -> None:
    """0780 builds each existing partition's sample index concurrently and attaches it; a later
    partition gets its own from the parent."""
    config = admin.alembic_config(scratch_database.url)
    command.upgrade(config, "0750")

    async def add_partitions(first: date, last: date) -> None:
        engine = create_admin_engine(scratch_database)
        try:
            async with engine.begin() as connection:
                await partition_repository.ensure_event_partitions(connection, first, last)
        finally:
            await engine.dispose()

    asyncio.run(add_partitions(date(2026, 1, 1), date(2026, 1, 1)))
    command.upgrade(config, "head")
    asyncio.run(add_partitions(date(2026, 1, 2), date(2026, 1, 2)))

    def sample_indexes(connection: Connection) -> list[tuple[str, bool]]:
        rows = connection.execute(
            text(
                "SELECT t.relname, x.indisvalid FROM pg_index x"
                " JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
                " WHERE t.relname LIKE 'events%' AND pg_get_indexdef(x.indexrelid) LIKE"
                " '%WHERE ((NOT is_bot) AND ((hashtext(distinct_id) & 7) = 0))' ORDER BY 1"
            )
        )
        return [(row[0], row[1]) for row in rows]

    assert _with_connection(scratch_database, sample_indexes) == [
        ("events", True),
        ("events_default", True),
        ("events_p20260101", True),
        ("events_p20260102", True),
    ]


def test_every_key_includes_project_id(scratch_database: AdminDatabaseSettings) -> None:
    """Ready for Citus: distributed tables' primary and unique keys all include project_id."""
    command.upgrade(admin.alembic_config(scratch_database.url), "head")
    rows = _with_connection(
        scratch_database,
        lambda connection: connection.execute(
            text(
                "SELECT rel.relname, con.conname, array_agg(att.attname::text)"
                " FROM pg_constraint con"
                " JOIN pg_class rel ON rel.oid = con.conrelid"
                " JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = ANY (con.conkey)"
                " WHERE con.contype IN ('p', 'u') AND rel.relnamespace = 'public'::regnamespace"
                " AND rel.relname <> 'alembic_version'"
                " GROUP BY rel.relname, con.conname"
            )
        ).all(),
    )
    assert rows
    for table, constraint, columns in rows:
        if table == "projects":
            # The tenant table itself (a Citus reference table): keyed by project_id, and
            # its keys' unique columns are unique across tenants by design.
            continue
        assert "project_id" in columns, f"{table}.{constraint} lacks project_id"


# Tables whose rows live only inside a refresh's transaction (migrations 1100, 1160, 1220).
TRANSIENT_TABLES = (
    "query_rollup_events_counted",
    "query_rollup_events_items",
    "query_rollup_events_staged",
    "query_rollup_sessions_staged",
)


def _catalog_answers(db: DatabaseHarness, tables: tuple[str, ...], query: str) -> dict[str, set[str]]:
    """Per table, the distinct answers (as text) of `query`, a one-value catalog query whose %s is
    the table's oid: on the coordinator and, on Citus, on every shard placement (a setting made on
    the coordinator's table alone would leave the workers' shards as they were)."""

    def answers(connection: Connection) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for table in tables:
            found[table] = {str(connection.execute(text(query % f"'{table}'::regclass")).scalar_one())}
            if db.citus is not None:
                placements = connection.execute(
                    text("SELECT result FROM run_command_on_placements(CAST(:table AS regclass), :command)"),
                    {"table": table, "command": query % "'%s'::regclass"},
                )
                found[table] |= set(placements.scalars())
        return found

    return _with_connection(db.admin, answers)


def test_the_refreshs_transient_tables_write_no_wal(db: DatabaseHarness) -> None:
    """Their rows never outlive the refresh's transaction, so they are UNLOGGED; on Citus every
    shard placement too (the coordinator's table alone would leave the rows' WAL on the workers)."""
    persistence = "SELECT CAST(relpersistence AS text) FROM pg_class WHERE oid = %s"
    assert _catalog_answers(db, TRANSIENT_TABLES, persistence) == {table: {"u"} for table in TRANSIENT_TABLES}


def test_the_refreshs_staged_and_counted_events_carry_no_index(db: DatabaseHarness) -> None:
    """Every reader takes every row of its project (a scan); an index entry per staged event cost
    the staging statement a quarter of its CPU (migration 1170). On Citus, every shard placement."""
    tables = ("query_rollup_events_counted", "query_rollup_events_items", "query_rollup_events_staged")
    indexes = "SELECT count(*) FROM pg_index WHERE indrelid = %s"
    assert _catalog_answers(db, tables, indexes) == {table: {"0"} for table in tables}


def test_the_sessions_pages_keep_room_for_heap_only_updates(db: DatabaseHarness) -> None:
    """Each batch rewrites its sessions' rows; a heap-only update needs room on the row's own page
    (migration 1180). On Citus, every shard placement."""
    options = "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = %s"
    assert _catalog_answers(db, ("query_sessions",), options) == {"query_sessions": {"fillfactor=90"}}


def test_the_folded_sessions_pages_keep_room_for_heap_only_updates(db: DatabaseHarness) -> None:
    """Each merge replaces its touched sessions' folded rows, indexed columns unchanged (migration
    1230). On Citus, every shard placement."""
    options = "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = %s"
    table = "query_rollup_sessions_folded"
    assert _catalog_answers(db, (table,), options) == {table: {"fillfactor=70"}}


# The rows in the TOAST table of the table whose oid is %s (a superuser's query: pg_toast is theirs).
_TOAST_ROWS = (
    "SELECT (xpath('/row/n/text()', query_to_xml("
    "format('SELECT count(*) AS n FROM %%s', reltoastrelid::regclass), false, true, '')))[1]::text"
    " FROM pg_class WHERE oid = %s"
)


def _hours_toast_rows(db: DatabaseHarness) -> int:
    """The TOAST rows of `query_rollup_hours`: the coordinator's and, on Citus, every placement's."""
    database = db.admin.url.rsplit("/", 1)[1]
    rows = int(db.postgres.psql(_TOAST_ROWS % "'query_rollup_hours'::regclass", database))
    if db.citus is not None:
        # run_command_on_placements formats the command with the shard's name: format()'s own %s doubled.
        on_placements = _TOAST_ROWS.replace("%%s", "%%%%s") % "'%s'::regclass"
        rows += int(
            db.postgres.psql(
                "SELECT coalesce(sum(result::bigint), 0) FROM run_command_on_placements("
                f"'query_rollup_hours', $${on_placements}$$)",
                database,
            )
        )
    return rows


def test_every_day_cubes_sketch_stays_in_its_row(db: DatabaseHarness) -> None:
    """A full `visitors` sketch (~2.6 kB, past the 2 kB TOAST threshold) is stored in its cube's
    row: a merge of the group reads and writes it with the row, not as TOAST rows. Visits and
    pages store it PLAIN (0101), the session cubes keep rows of up to 8 kB inline (1190): on
    Citus on every shard placement. Its effect, on one session cube."""
    storage = "SELECT CAST(attstorage AS text) FROM pg_attribute WHERE attrelid = %s AND attname = 'visitors'"
    plain = ("query_rollup_visits", "query_rollup_pages")
    assert _catalog_answers(db, plain, storage) == {table: {"p"} for table in plain}
    options = "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = %s"
    assert _catalog_answers(db, SESSION_CUBE_TABLES, options) == {
        table: {"toast_tuple_target=8160"} for table in SESSION_CUBE_TABLES
    }
    project_id = 900_000 + uuid.uuid4().int % 100_000

    def insert_full_sketch(connection: Connection) -> int:
        inserted = connection.execute(
            text(
                "INSERT INTO query_rollup_hours (project_id, day, grain, hour, visitors, sessions, bounces,"
                " duration_s, pageviews, events, session_pageviews)"
                " SELECT :project_id, DATE '2026-12-01', 255, 9, hll_add_agg(hll_hash_integer(g), 12), 1, 0, 0, 1, 1, 1"
                " FROM generate_series(1, 200000) g RETURNING pg_column_size(visitors)"
            ),
            {"project_id": project_id},
        ).scalar_one()
        connection.commit()
        return int(inserted)

    def delete_it(connection: Connection) -> None:
        connection.execute(text("DELETE FROM query_rollup_hours WHERE project_id = :p"), {"p": project_id})
        connection.commit()

    before = _hours_toast_rows(db)
    try:
        assert _with_connection(db.admin, insert_full_sketch) > 2_500
        assert _hours_toast_rows(db) == before
    finally:
        _with_connection(db.admin, delete_it)


def test_session_days_keep_each_page_and_name_once_with_its_count(scratch_database: AdminDatabaseSettings) -> None:
    """1210 turns a session day's arrays (0850: a path per batch, a name per event) into each page
    and name once with the events of each name; its downgrade gives each name back that often."""
    config = admin.alembic_config(scratch_database.url)
    command.upgrade(config, "1200")
    insert = (
        "INSERT INTO query_rollup_session_days (project_id, day, session_id, distinct_id, pageviews, events, pages,"
        " event_names) VALUES (1, '2026-01-13', 's1', 'v1', 3, 8, :pages, :names),"
        " (1, '2026-01-13', 's2', 'v2', 1, 1, '{/}', '{}')"
    )
    pages = ["/pricing", "/", "/pricing", "/checkout", "/"]
    names = ["scroll", "signup", "scroll", "purchase", "scroll"]

    def write(connection: Connection) -> None:
        connection.execute(text(insert), {"pages": pages, "names": names})
        connection.commit()

    def arrays(counts: bool) -> Callable[[Connection], list[tuple[Any, ...]]]:
        def read(connection: Connection) -> list[tuple[Any, ...]]:
            columns = "pages, event_names" + (", event_counts" if counts else "")
            rows = connection.execute(text(f"SELECT {columns} FROM query_rollup_session_days ORDER BY session_id"))
            return [tuple(row) for row in rows]

        return read

    _with_connection(scratch_database, write)
    command.upgrade(config, "1210")
    assert _with_connection(scratch_database, arrays(counts=True)) == [
        (["/", "/checkout", "/pricing"], ["purchase", "scroll", "signup"], [1, 3, 1]),
        (["/"], [], []),
    ]
    command.downgrade(config, "1200")
    assert _with_connection(scratch_database, arrays(counts=False)) == [
        (["/", "/checkout", "/pricing"], ["purchase", "scroll", "scroll", "scroll", "signup"]),
        (["/"], []),
    ]
