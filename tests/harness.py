"""A throwaway Postgres + PgBouncer for the test run, built with the same code as `sightline up`."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.cli import admin
from services.cli.packages import ensure_packages_installed
from services.cli.pgbouncer import LocalPgBouncer
from services.cli.postgres import LocalPostgres
from services.cli.processes import free_port
from services.cli.stack import database_urls
from services.common.settings import AdminDatabaseSettings, DatabaseSettings

# Deliberately small, so a test can open far more sessions than Postgres allows.
TEST_MAX_CONNECTIONS = 40
TEST_POOL_SIZE = 20


@dataclass(frozen=True)
class DatabaseHarness:
    postgres: LocalPostgres
    pgbouncer: LocalPgBouncer
    database: DatabaseSettings
    admin: AdminDatabaseSettings
    pgbouncer_admin_url: str
    root: Path

    def database_for(self, service: str, **overrides: object) -> DatabaseSettings:
        values = {**self.database.__dict__, **overrides}
        return DatabaseSettings(**values)  # type: ignore[arg-type]


@contextmanager
def start_database_harness() -> Iterator[DatabaseHarness]:
    ensure_packages_installed()
    # Not under pytest's tmp dir: that is private to root and the service account must reach it.
    root = Path(tempfile.mkdtemp(prefix="sightline-test-", dir="/tmp"))
    root.chmod(0o755)
    password = secrets.token_urlsafe(16)
    postgres_port, pgbouncer_port = free_port(), free_port()
    postgres = LocalPostgres(
        data_dir=root / "postgres",
        run_dir=root / "run",
        log_file=root / "log" / "postgres.log",
        port=postgres_port,
        max_connections=TEST_MAX_CONNECTIONS,
        server_settings={
            "shared_buffers": "128MB",
            "fsync": "off",  # a throwaway cluster; durability is not what these tests check
            "jit": "off",
            "log_min_duration_statement": "-1",
        },
    )
    pgbouncer = LocalPgBouncer(
        conf_dir=root / "pgbouncer",
        run_dir=root / "run",
        log_file=root / "log" / "pgbouncer.log",
        listen_port=pgbouncer_port,
        postgres_port=postgres_port,
        user="sightline",
        password=password,
        pool_size=TEST_POOL_SIZE,
        max_client_conn=2000,
    )
    try:
        postgres.init()
        postgres.start()
        postgres.wait_accepting()
        postgres.ensure_role_and_database("sightline", password, "sightline")
        pgbouncer.start()
        urls = database_urls(password, postgres_port, pgbouncer_port)
        admin_settings = AdminDatabaseSettings(url=urls["SIGHTLINE_ADMIN_DATABASE_URL"])
        admin.migrate(admin_settings)
        yield DatabaseHarness(
            postgres=postgres,
            pgbouncer=pgbouncer,
            database=DatabaseSettings(url=urls["SIGHTLINE_DATABASE_URL"], pool_size=10, pool_timeout_s=5.0),
            admin=admin_settings,
            pgbouncer_admin_url=urls["SIGHTLINE_PGBOUNCER_ADMIN_URL"],
            root=root,
        )
    finally:
        pgbouncer.stop()
        postgres.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
