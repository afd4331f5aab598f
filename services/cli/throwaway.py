"""A throwaway Postgres + PgBouncer on free ports, built with the same code as `sightline up`.

For the test harness and for benchmarks that must not touch a developer's `.data/`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.cli import admin
from services.cli.citus import LocalCitus, with_citus
from services.cli.packages import ensure_packages_installed
from services.cli.pgbouncer import LocalPgBouncer
from services.cli.postgres import DEFAULT_SERVER_SETTINGS, LocalPostgres
from services.cli.processes import free_port
from services.cli.stack import DATABASE_NAME, DATABASE_USER, SERVICE_DATABASE_USER, database_urls
from services.common.settings import AdminDatabaseSettings


@dataclass(frozen=True)
class ThrowawayDatabase:
    postgres: LocalPostgres
    pgbouncer: LocalPgBouncer
    admin: AdminDatabaseSettings
    service_url: str  # through PgBouncer, as the services' role (rows only, no DDL)
    pgbouncer_admin_url: str
    citus: LocalCitus | None = None


@contextmanager
def throwaway_database(
    root: Path,
    *,
    max_connections: int = 100,
    server_settings: dict[str, str] | None = None,
    pool_size: int = 20,
    max_client_conn: int = 1000,
    citus_workers: int = 0,
    citus_shard_count: int | None = None,
) -> Iterator[ThrowawayDatabase]:
    """Initialises a cluster under root (which the service account must reach), migrated to head.

    citus_workers > 0: the cluster is a Citus coordinator with that many workers on free ports,
    and the migrations distribute the tables over them (citus_shard_count shards per table).
    """
    ensure_packages_installed()
    password = secrets.token_urlsafe(16)
    service_password = secrets.token_urlsafe(16)
    postgres_port, pgbouncer_port = free_port(), free_port()
    postgres = LocalPostgres(
        data_dir=root / "postgres",
        run_dir=root / "run",
        log_file=root / "log" / "postgres.log",
        port=postgres_port,
        max_connections=max_connections,
        server_settings=dict(DEFAULT_SERVER_SETTINGS if server_settings is None else server_settings),
    )
    citus = None
    if citus_workers:
        postgres.server_settings = with_citus(postgres.server_settings)
        citus = LocalCitus.for_coordinator(
            postgres, root / "citus", citus_workers, worker_ports=[free_port() for _ in range(citus_workers)]
        )
    pgbouncer = LocalPgBouncer(
        conf_dir=root / "pgbouncer",
        run_dir=root / "run",
        log_file=root / "log" / "pgbouncer.log",
        listen_port=pgbouncer_port,
        postgres_port=postgres_port,
        user=SERVICE_DATABASE_USER,
        password=service_password,
        pool_size=pool_size,
        max_client_conn=max_client_conn,
    )
    try:
        postgres.init()
        postgres.start()
        postgres.wait_accepting()
        postgres.ensure_role_and_database(DATABASE_USER, password, DATABASE_NAME)
        if citus is not None:
            citus.start_workers()
            citus.join_stack(DATABASE_USER, password, DATABASE_NAME, [(SERVICE_DATABASE_USER, service_password)])
            if citus_shard_count is not None:
                postgres.psql(f"ALTER DATABASE {DATABASE_NAME} SET citus.shard_count = {int(citus_shard_count)}")
        postgres.ensure_login_role(SERVICE_DATABASE_USER, service_password, watched_by=DATABASE_USER)
        pgbouncer.start()
        urls = database_urls(password, service_password, postgres_port, pgbouncer_port)
        admin_settings = AdminDatabaseSettings(url=urls["SIGHTLINE_ADMIN_DATABASE_URL"])
        admin.migrate(admin_settings)
        yield ThrowawayDatabase(
            postgres=postgres,
            pgbouncer=pgbouncer,
            admin=admin_settings,
            service_url=urls["SIGHTLINE_DATABASE_URL"],
            pgbouncer_admin_url=urls["SIGHTLINE_PGBOUNCER_ADMIN_URL"],
            citus=citus,
        )
    finally:
        pgbouncer.stop()
        postgres.stop(mode="immediate")
        if citus is not None:
            citus.stop_workers(mode="immediate")
