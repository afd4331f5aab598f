"""`sightline up / down / status`: the whole stack on one machine, without Docker.

Everything lives under the data directory (``.data/`` by default):

    postgres/        the cluster (PGDATA), owned by the service account
    pgbouncer/       pgbouncer.ini and userlist.txt, mode 600
    run/             sockets and PID files
    log/             one log file per process
    traces/          OTLP/JSON span lines, one file per process (when no collector is set)
    citus/           with `--citus-workers N`: the workers' clusters (services/cli/citus.py)
    sightline.env    database URLs with the generated passwords (mode 600)
    demo-project.json  the demo project's keys
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.cli.citus import LocalCitus, with_citus
from services.cli.packages import ensure_packages_installed
from services.cli.pgbouncer import LocalPgBouncer
from services.cli.postgres import LocalPostgres
from services.cli.processes import (
    StackError,
    check_reachable_by_service_account,
    port_is_free,
    raise_open_files_limit,
    read_pid,
    stop_pid,
)
from services.common.log import granian_log_config
from services.common.settings import SERVICES, ServerSettings, ServiceName, StackSettings

# The owner of the schema: migrations, retention, partitions, `sightline project ...` (direct).
DATABASE_USER = "sightline"
# What the services log in as, through PgBouncer: rows only, no DDL (alembic/versions/*_0600_*).
SERVICE_DATABASE_USER = "sightline_service"
DATABASE_NAME = "sightline"
READY_TIMEOUT_S = 60.0
TRACE_DESTINATIONS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "SIGHTLINE_TRACE_FILE",
    "SIGHTLINE_TRACE_DIR",
)


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def pgbouncer(self) -> Path:
        return self.root / "pgbouncer"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def traces(self) -> Path:
        return self.root / "traces"

    @property
    def citus(self) -> Path:
        return self.root / "citus"

    @property
    def env_file(self) -> Path:
        return self.root / "sightline.env"

    @property
    def demo_project(self) -> Path:
        return self.root / "demo-project.json"

    def service_pid(self, service: str) -> Path:
        return self.run / f"{service}.pid"

    def service_log(self, service: str) -> Path:
        return self.log / f"{service}.log"


def database_urls(password: str, service_password: str, postgres_port: int, pgbouncer_port: int) -> dict[str, str]:
    owner = f"{DATABASE_USER}:{password}"
    service = f"{SERVICE_DATABASE_USER}:{service_password}"
    return {
        "SIGHTLINE_DATABASE_URL": f"postgresql+asyncpg://{service}@127.0.0.1:{pgbouncer_port}/{DATABASE_NAME}",
        "SIGHTLINE_ADMIN_DATABASE_URL": f"postgresql+asyncpg://{owner}@127.0.0.1:{postgres_port}/{DATABASE_NAME}",
        # PgBouncer's read-only console (SHOW POOLS / SHOW STATS); PgBouncer knows only the service role.
        "SIGHTLINE_PGBOUNCER_ADMIN_URL": f"postgresql://{service}@127.0.0.1:{pgbouncer_port}/pgbouncer",
    }


# The owner's credentials go to the ingest service alone (it creates each day's event
# partition, services/ingest/tasks.py); query and replay never hold them.
OWNER_ONLY_VARIABLES = ("SIGHTLINE_ADMIN_DATABASE_URL", "SIGHTLINE_DATABASE_PASSWORD")


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def load_local_env() -> None:
    """Database URLs that `sightline up` wrote, as defaults under the real environment."""
    env_file = StackSettings.from_env().data_dir / "sightline.env"
    for key, value in read_env_file(env_file).items():
        os.environ.setdefault(key, value)


class LocalStack:
    def __init__(self, settings: StackSettings, citus_workers: int = 0) -> None:
        """citus_workers > 0: the stack's Postgres is a Citus coordinator with that many workers.

        A data directory made that way stays a Citus stack (its workers are recorded), so a
        later `sightline up`, `down` or `status` without the option finds them.
        """
        self.settings = settings
        self.paths = StackPaths(settings.data_dir)
        self.postgres = LocalPostgres(
            data_dir=self.paths.postgres,
            run_dir=self.paths.run,
            log_file=self.paths.log / "postgres.log",
            port=settings.postgres_port,
            bin_dir=settings.pg_bin_dir,
            max_connections=settings.postgres_max_connections,
        )
        self.citus = self._citus(citus_workers)
        if self.citus is not None:
            self.postgres.server_settings = with_citus(self.postgres.server_settings)

    def _citus(self, citus_workers: int) -> LocalCitus | None:
        recorded = LocalCitus.recorded(self.postgres, self.paths.citus)
        if recorded is not None:
            if citus_workers and citus_workers != len(recorded.workers):
                raise StackError(
                    f"this stack has {len(recorded.workers)} Citus workers; add one with "
                    "`sightline citus add-worker` (docs/scaling.md), or start afresh in another SIGHTLINE_DATA_DIR"
                )
            return recorded
        if not citus_workers:
            return None
        if self.postgres.initialised:
            raise StackError(
                f"{self.paths.postgres} holds a single-node (plain Postgres) stack; a Citus stack needs a "
                "fresh data directory: `sightline down`, then set SIGHTLINE_DATA_DIR (or move .data away)"
            )
        return LocalCitus.for_coordinator(self.postgres, self.paths.citus, citus_workers)

    # -- credentials -------------------------------------------------------------------

    def database_password(self) -> str:
        return self._password()

    def service_logins(self) -> list[tuple[str, str]]:
        """The services' role and its password: a Citus worker must know them too."""
        return [(SERVICE_DATABASE_USER, self._service_password())]

    def _password(self) -> str:
        existing = read_env_file(self.paths.env_file).get("SIGHTLINE_DATABASE_PASSWORD")
        return existing or secrets.token_urlsafe(24)

    def _service_password(self) -> str:
        """The services' role's password: SIGHTLINE_SERVICE_DATABASE_PASSWORD, else the one
        `up` generated before, else a new one."""
        configured = os.environ.get("SIGHTLINE_SERVICE_DATABASE_PASSWORD")
        existing = read_env_file(self.paths.env_file).get("SIGHTLINE_SERVICE_DATABASE_PASSWORD")
        return configured or existing or secrets.token_urlsafe(24)

    def _write_env_file(self, password: str, service_password: str) -> dict[str, str]:
        values = {
            "SIGHTLINE_DATABASE_PASSWORD": password,
            "SIGHTLINE_SERVICE_DATABASE_PASSWORD": service_password,
            **database_urls(password, service_password, self.settings.postgres_port, self.settings.pgbouncer_port),
        }
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.paths.env_file.touch(mode=0o600)
        self.paths.env_file.write_text(
            "# Written by `sightline up`; read by the sightline command and the services.\n"
            + "".join(f"{key}={value}\n" for key, value in values.items())
        )
        return values

    def pgbouncer(self) -> LocalPgBouncer:
        """PgBouncer knows only the services' role: nobody reaches the owner through it."""
        return LocalPgBouncer(
            conf_dir=self.paths.pgbouncer,
            run_dir=self.paths.run,
            log_file=self.paths.log / "pgbouncer.log",
            listen_port=self.settings.pgbouncer_port,
            postgres_port=self.settings.postgres_port,
            user=SERVICE_DATABASE_USER,
            password=self._service_password(),
            database=DATABASE_NAME,
            pool_size=self.settings.pgbouncer_pool_size,
            max_client_conn=self.settings.pgbouncer_max_client_conn,
            binary=self.settings.pgbouncer_bin,
        )

    # -- up ----------------------------------------------------------------------------

    def check_ports(self) -> None:
        """Fail before starting anything if a port we need is held by someone else."""
        wanted: list[tuple[str, int, int | None]] = [
            ("Postgres", self.settings.postgres_port, self.postgres.pid()),
            ("PgBouncer", self.settings.pgbouncer_port, self.pgbouncer().pid()),
        ]
        if self.citus is not None:
            wanted += [(f"Citus worker {worker.port}", worker.port, worker.pid()) for worker in self.citus.workers]
        for service in SERVICES:
            server = ServerSettings.from_env(service)
            wanted.append((service, server.port, read_pid(self.paths.service_pid(service))))
        taken = [
            f"port {port} ({name}) is already in use by another process"
            for name, port, own_pid in wanted
            if own_pid is None and not port_is_free(port)
        ]
        if taken:
            raise StackError(
                "; ".join(taken) + ". Stop that process or choose another port with "
                "SIGHTLINE_POSTGRES_PORT, SIGHTLINE_PGBOUNCER_PORT or SIGHTLINE_<SERVICE>_PORT."
            )

    def up(self) -> dict[str, str]:
        """Start whatever is not running yet; return the environment the services use."""
        ensure_packages_installed()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        check_reachable_by_service_account(self.paths.root)
        self.check_ports()

        password = self._password()
        service_password = self._service_password()
        env_values = self._write_env_file(password, service_password)
        started: list[str] = []
        try:
            if not self.postgres.initialised:
                print("Initialising a project-local Postgres cluster in", self.paths.postgres, flush=True)
                self.postgres.init()
            if self.postgres.pid() is None:
                self.postgres.start()
                started.append("postgres")
            self.postgres.wait_accepting()
            if self.citus is not None:
                # Before any DDL on the coordinator: Citus sends it on to the joined workers.
                started += self.citus.start_workers()
            self.postgres.ensure_role_and_database(DATABASE_USER, password, DATABASE_NAME)
            if self.citus is not None:
                self.citus.join_stack(
                    DATABASE_USER, password, DATABASE_NAME, [(SERVICE_DATABASE_USER, service_password)]
                )
            # Before `migrate`, whose migration 0600 grants this role its rows.
            self.postgres.ensure_login_role(SERVICE_DATABASE_USER, service_password, watched_by=DATABASE_USER)

            bouncer = self.pgbouncer()
            if bouncer.pid() is None:
                bouncer.start()
                started.append("pgbouncer")

            service_env = self._service_env(env_values)
            _run_cli(["migrate"], service_env)

            for service in SERVICES:
                if read_pid(self.paths.service_pid(service)) is None:
                    self._start_service(service, service_env)
                    started.append(service)
            for service in SERVICES:
                self._wait_ready(service)
        except BaseException:
            # Nothing left half-started: undo what this call started, newest first.
            for name in reversed(started):
                self._stop(name)
            raise
        return env_values

    def _service_env(self, env_values: dict[str, str]) -> dict[str, str]:
        service_env = {**os.environ, **env_values}
        if not any(name in service_env for name in TRACE_DESTINATIONS):
            # No collector configured: traces go to local files, so diagnosis needs no server.
            service_env["SIGHTLINE_TRACE_DIR"] = str(self.paths.traces)
        return service_env

    def stop_service(self, service: ServiceName) -> bool:
        """SIGTERM and wait for the exit (Granian finishes in-flight requests, the app flushes)."""
        return self._stop(service)

    def start_service(self, service: ServiceName) -> None:
        """Start one service of a running stack again and wait until it is ready."""
        self._start_service(service, self._service_env(read_env_file(self.paths.env_file)))
        self._wait_ready(service)

    def _start_service(self, service: ServiceName, env: dict[str, str]) -> None:
        if service != "ingest":
            env = {key: value for key, value in env.items() if key not in OWNER_ONLY_VARIABLES}
        server = ServerSettings.from_env(service, env)
        self.paths.log.mkdir(parents=True, exist_ok=True)
        self.paths.run.mkdir(parents=True, exist_ok=True)
        log_config = self.paths.run / f"{service}.log-config.json"
        log_config.write_text(json.dumps(granian_log_config(service)))
        log = self.paths.service_log(service).open("ab")
        process = subprocess.Popen(
            granian_command(service, server, log_config),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives this command; stopped by PID in `down`
            preexec_fn=raise_open_files_limit,
            cwd=Path(__file__).resolve().parents[2],
        )
        self.paths.service_pid(service).write_text(f"{process.pid}\n")

    def _wait_ready(self, service: ServiceName) -> None:
        server = ServerSettings.from_env(service)
        url = f"http://{server.host}:{server.port}/health/ready"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if read_pid(self.paths.service_pid(service)) is None:
                raise StackError(f"{service} exited during start; see {self.paths.service_log(service)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise StackError(
                    f"{service} was not ready within {READY_TIMEOUT_S:.0f}s; see {self.paths.service_log(service)}"
                )
            time.sleep(0.2)

    # -- down / status -------------------------------------------------------------------

    def _stop(self, name: str) -> bool:
        if name == "postgres":
            return self.postgres.stop()
        if name == "pgbouncer":
            return self.pgbouncer().stop()
        if name.startswith("citus-worker-") and self.citus is not None:
            return self.citus.workers[int(name.removeprefix("citus-worker-")) - 1].stop()
        pid_file = self.paths.service_pid(name)
        pid = read_pid(pid_file)
        stopped = pid is not None and stop_pid(pid, timeout_s=40)
        if pid is not None:
            # Granian's master stops its workers on SIGTERM; any worker left behind (the
            # master was killed) is in the same process group, started by us.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        return stopped

    def down(self) -> list[str]:
        stopped = [name for name in (*SERVICES, "pgbouncer", "postgres") if self._stop(name)]
        if self.citus is not None:
            stopped += self.citus.stop_workers()
        return stopped

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            {"name": "postgres", "port": self.settings.postgres_port, "pid": self.postgres.pid()},
            {
                "name": "pgbouncer",
                "port": self.settings.pgbouncer_port,
                "pid": self.pgbouncer().pid(),
            },
        ]
        if self.citus is not None:
            rows += [
                {"name": f"worker-{index}", "port": worker.port, "pid": worker.pid()}
                for index, worker in enumerate(self.citus.workers, start=1)
            ]
        for service in SERVICES:
            server = ServerSettings.from_env(service)
            row: dict[str, object] = {
                "name": service,
                "port": server.port,
                "pid": read_pid(self.paths.service_pid(service)),
            }
            if row["pid"] is not None:
                row["ready"] = _is_ready(f"http://{server.host}:{server.port}/health/ready")
            rows.append(row)
        return rows

    def demo_project(self) -> dict[str, object] | None:
        if not self.paths.demo_project.exists():
            return None
        loaded: dict[str, object] = json.loads(self.paths.demo_project.read_text())
        return loaded


def granian_command(service: ServiceName, server: ServerSettings, log_config: Path | None = None) -> list[str]:
    """How every service is served, here and in the containers (`sightline serve`)."""
    # fmt: off
    command = [
        sys.executable, "-m", "granian",
        "--interface", "asgi",
        "--factory", f"services.{service}.app:create_app",
        "--host", server.host,
        "--port", str(server.port),
        "--workers", str(server.workers),
        "--loop", "uvloop",
        # Granian's default caps open connections near 1024; thousands of trackers keep
        # connections alive, and the app's own limits decide when to shed load.
        "--backlog", str(server.backpressure),
        "--backpressure", str(server.backpressure),
        # SIGTERM: stop accepting, let in-flight requests finish, then exit.
        "--workers-kill-timeout", "30",
        "--respawn-failed-workers",
        "--no-access-log",
    ]
    # fmt: on
    if log_config is not None:
        command += ["--log-config", str(log_config)]
    return command


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _run_cli(arguments: list[str], env: dict[str, str]) -> str:
    """Runs a `sightline` subcommand in a fresh process (its own event loop and engine)."""
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *arguments],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    if result.returncode != 0:
        raise StackError(f"sightline {' '.join(arguments)} failed:\n{result.stderr.strip()}")
    return result.stdout
