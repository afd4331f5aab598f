"""A throwaway Postgres + PgBouncer for the test run, built with the same code as `sightline up`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.cli.citus import LocalCitus
from services.cli.pgbouncer import LocalPgBouncer
from services.cli.postgres import LocalPostgres
from services.cli.serving import RunningService, running_service
from services.cli.throwaway import throwaway_database
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, ServiceName

# Deliberately small, so a test can open far more sessions than Postgres allows.
TEST_MAX_CONNECTIONS = 40
TEST_POOL_SIZE = 20

# SIGHTLINE_TEST_CITUS_WORKERS=2: the whole run against a Citus coordinator with two workers
# (the tables distributed by the migrations, alembic 0700) instead of one plain Postgres.
CITUS_WORKERS_VARIABLE = "SIGHTLINE_TEST_CITUS_WORKERS"
# Few shards per table: each daily partition of events has its own shards, and a test database
# with Citus's default 32 would take minutes to migrate. Four still spread projects over both workers.
TEST_CITUS_SHARD_COUNT = 4


def citus_workers_under_test() -> int:
    value = os.environ.get(CITUS_WORKERS_VARIABLE, "0").strip() or "0"
    if not value.isdigit():
        raise ValueError(f"{CITUS_WORKERS_VARIABLE} must be a number of workers, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class DatabaseHarness:
    postgres: LocalPostgres
    pgbouncer: LocalPgBouncer
    database: DatabaseSettings  # what services use: the services' role, through PgBouncer
    admin: AdminDatabaseSettings  # the owner, direct
    pgbouncer_admin_url: str
    root: Path
    citus: LocalCitus | None = None

    def serve(self, service: ServiceName, log_name: str, **settings: str) -> AbstractContextManager[RunningService]:
        """The service under Granian on this database (settings: SIGHTLINE_* names without the prefix)."""
        env = {
            **os.environ,
            "SIGHTLINE_DATABASE_URL": self.database.url,
            "SIGHTLINE_LOG_LEVEL": "WARNING",
            **{f"SIGHTLINE_{name}": value for name, value in settings.items()},
        }
        if service == "ingest":
            # As `sightline up` does: only ingest holds the owner's URL, for partition upkeep.
            env["SIGHTLINE_ADMIN_DATABASE_URL"] = self.admin.url
        return running_service(service, env, self.root / "log" / f"{log_name}.log")

    def database_for(self, service: str, **overrides: object) -> DatabaseSettings:
        values = {**self.database.__dict__, **overrides}
        return DatabaseSettings(**values)  # type: ignore[arg-type]


@contextmanager
def start_database_harness() -> Iterator[DatabaseHarness]:
    # Not under pytest's tmp dir: that is private to root and the service account must reach it.
    root = Path(tempfile.mkdtemp(prefix="sightline-test-", dir="/tmp"))
    root.chmod(0o755)
    try:
        with throwaway_database(
            root,
            max_connections=TEST_MAX_CONNECTIONS,
            server_settings={
                "shared_buffers": "128MB",
                "fsync": "off",  # a throwaway cluster; durability is not what these tests check
                "jit": "off",
            },
            pool_size=TEST_POOL_SIZE,
            max_client_conn=2000,
            citus_workers=citus_workers_under_test(),
            citus_shard_count=TEST_CITUS_SHARD_COUNT,
        ) as database:
            yield DatabaseHarness(
                postgres=database.postgres,
                pgbouncer=database.pgbouncer,
                database=DatabaseSettings(url=database.service_url, pool_size=10, pool_timeout_s=5.0),
                admin=database.admin,
                pgbouncer_admin_url=database.pgbouncer_admin_url,
                root=root,
                citus=database.citus,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
