"""A project-local PostgreSQL cluster, run as the service account. Never a system cluster."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from services.cli.processes import (
    StackError,
    as_service_account,
    make_owned_dir,
    make_server_dirs,
    read_pid,
    run,
    stop_pid,
)

# Tuned for this project's 2-core, 24 GiB target machine; tests pass smaller values.
DEFAULT_SERVER_SETTINGS: dict[str, str] = {
    "shared_buffers": "1GB",
    "effective_cache_size": "8GB",
    "work_mem": "32MB",
    "maintenance_work_mem": "512MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    # lz4, not "on" (pglz): after each checkpoint a page's first change writes its whole image,
    # compressed. Right after a CHECKPOINT the ingest writer's statement cost 0.63-0.68 ms of
    # backend CPU per 8-event request with pglz, 0.37-0.38 with lz4, 0.34 uncompressed, for 27.5,
    # 23 and 28.6 kB of WAL (tools.bench.ingest_wal_compression, docs/benchmarks.md); random-key
    # indexes (uuids, sessions) on a big database make such first changes common. Needs a server
    # built with lz4 (Debian's and the postgres:15 image's are).
    "wal_compression": "lz4",
    # JIT compilation costs more than it saves on dashboard-sized queries.
    "jit": "off",
    "random_page_cost": "1.1",
    # An acknowledged event must survive a crash, so commits stay synchronous.
    "synchronous_commit": "on",
    "log_line_prefix": "%m [%p] %q%a ",
}

# No visitor's data in the server log (docs/privacy.md). Always applied, whatever settings a
# caller passes: the ingest writer sends a batch's rows inside its statement text (one round
# trip, services/ingest/repository.py), so any setting that logs statements would copy other
# visitors' events into a file that neither erasure nor retention can reach.
# - log_min_error_statement = panic: a failing statement is logged without its text;
# - log_error_verbosity = terse: no DETAIL/CONTEXT, which repeat the failing row or JSON;
# - log_parameter_max_length*: bound values never logged (the services use parameters too);
# - log_min_duration_statement = -1: a slow statement would be logged with its text
#   (pg_stat_statements normalises constants, if timings of slow statements are wanted);
# - log_statement = none: the default, stated so nobody turns it on by accident here.
PRIVACY_SERVER_SETTINGS: dict[str, str] = {
    "log_min_error_statement": "panic",
    "log_error_verbosity": "terse",
    "log_parameter_max_length": "0",
    "log_parameter_max_length_on_error": "0",
    "log_min_duration_statement": "-1",
    "log_min_duration_sample": "-1",
    "log_statement": "none",
}


@dataclass
class LocalPostgres:
    data_dir: Path  # PGDATA
    run_dir: Path  # unix socket and nothing else
    log_file: Path
    port: int
    bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    max_connections: int = 100
    server_settings: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SERVER_SETTINGS))

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise StackError(f"{path} not found: install PostgreSQL 15 server binaries or set SIGHTLINE_PG_BIN_DIR")
        return str(path)

    def _pg_ctl(self, *arguments: str) -> list[str]:
        """`pg_ctl` on this cluster's data directory, run as the service account."""
        return as_service_account([self._bin("pg_ctl"), "-D", str(self.data_dir), *arguments])

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def pid(self) -> int | None:
        return read_pid(self.data_dir / "postmaster.pid")

    def init(self) -> None:
        make_server_dirs(self.data_dir, self.run_dir, self.log_file)
        run(
            as_service_account(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                ]
            )
        )
        settings = {
            **self.server_settings,
            **PRIVACY_SERVER_SETTINGS,
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.run_dir}'",
            "max_connections": str(self.max_connections),
        }
        conf = "\n".join(
            f"{key} = {value if value.startswith(chr(39)) else repr(value)}" for key, value in settings.items()
        )
        run(
            as_service_account(["tee", "-a", str(self.data_dir / "postgresql.conf")]),
            input_text=f"\n# Sightline local cluster\n{conf}\n",
        )

    def start(self) -> None:
        if self.pid() is not None:
            return
        make_owned_dir(self.run_dir, 0o755)
        run(self._pg_ctl("-l", str(self.log_file), "-w", "-t", "60", "start"))

    def stop(self, mode: str = "fast") -> bool:
        pid = self.pid()
        if pid is None:
            return False
        result = run(
            self._pg_ctl("-m", mode, "-w", "stop"),
            check=False,
        )
        if result.returncode != 0:
            stop_pid(pid)
        return True

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart`: every connection is cut (fast: transactions are rolled back) and the server comes back."""
        run(self._pg_ctl("-l", str(self.log_file), "-m", mode, "-w", "-t", "60", "restart"))

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Runs sql as the cluster's superuser over the unix socket; returns unaligned output."""
        result = run(
            as_service_account(
                [
                    self._bin("psql") if (self.bin_dir / "psql").exists() else "psql",
                    "-h",
                    str(self.run_dir),
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-c",
                    sql,
                ]
            )
        )
        return result.stdout.strip()

    def ensure_login_role(self, user: str, password: str, *, watched_by: str | None = None) -> None:
        """A plain login role (no superuser, no CREATEROLE, no CREATEDB) with this password.

        watched_by: a role made a member of it, so that it sees the role's sessions in full in
        pg_stat_activity and may cancel them (the owner watching the services' role).
        """
        if not user.isidentifier() or not (watched_by or "x").isidentifier():
            raise StackError("database users must be plain identifiers")
        quoted_password = password.replace("'", "''")
        if self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'") != "1":
            self.psql(f"CREATE ROLE {user} LOGIN PASSWORD '{quoted_password}'")
        else:
            self.psql(f"ALTER ROLE {user} LOGIN PASSWORD '{quoted_password}'")
        if watched_by is not None:
            self.psql(f"GRANT {user} TO {watched_by}")

    def ensure_role_and_database(self, user: str, password: str, database: str) -> None:
        if not user.isidentifier() or not database.isidentifier():
            raise StackError("database user and name must be plain identifiers")
        self.ensure_login_role(user, password)
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") != "1":
            self.psql(f"CREATE DATABASE {database} OWNER {user}")
        # The query rollups' HyperLogLog type (Debian: postgresql-15-hll). `hll` is not a
        # trusted extension, so the superuser creates it here and the (non-superuser)
        # migration finds it in place; template1 too, for databases made later (tests).
        for target in ("template1", database):
            self.psql("CREATE EXTENSION IF NOT EXISTS hll", database=target)

    def wait_accepting(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            result = run(
                as_service_account(
                    [
                        self._bin("pg_isready"),
                        "-h",
                        str(self.run_dir),
                        "-p",
                        str(self.port),
                    ]
                ),
                check=False,
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise StackError(f"Postgres on port {self.port} did not accept connections; see {self.log_file}")
            time.sleep(0.2)
