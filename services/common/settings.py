"""Settings, one small object per concern, read from the environment.

Every value can be set for all services (``SIGHTLINE_DB_POOL_SIZE``) or for one service
(``SIGHTLINE_INGEST_DB_POOL_SIZE``); the per-service name wins. Settings objects are built
once, in an app factory or a command, and passed down; tests build their own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ServiceName = Literal["ingest", "query", "replay"]
SERVICES: tuple[ServiceName, ...] = ("ingest", "query", "replay")

DEFAULT_PORTS: dict[ServiceName, int] = {"ingest": 8001, "query": 8002, "replay": 8003}
# Ingest takes the tracker traffic, which needs more than one core's worth of Python at
# the seed load; reads are light and wait mostly on Postgres.
DEFAULT_WORKERS: dict[ServiceName, int] = {"ingest": 2, "query": 1, "replay": 1}


class SettingsError(ValueError):
    """A setting in the environment has a value we cannot use."""


class Env:
    """Looks a name up with the service prefix first, then the shared prefix."""

    def __init__(self, service: str | None, environ: Mapping[str, str]) -> None:
        self._service = service
        self._environ = environ

    def raw(self, name: str, *, shared: bool = True) -> str | None:
        if self._service:
            value = self._environ.get(f"SIGHTLINE_{self._service.upper()}_{name}")
            if value is not None:
                return value
        return self._environ.get(f"SIGHTLINE_{name}") if shared else None

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None or value == "" else value

    def integer(self, name: str, default: int, *, shared: bool = True) -> int:
        value = self.raw(name, shared=shared)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError as exc:
            raise SettingsError(f"SIGHTLINE_{name} must be an integer, got {value!r}") from exc

    def number(self, name: str, default: float) -> float:
        value = self.raw(name)
        if value is None or value == "":
            return default
        try:
            return float(value)
        except ValueError as exc:
            raise SettingsError(f"SIGHTLINE_{name} must be a number, got {value!r}") from exc

    def items(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        return tuple(part.strip() for part in value.split(",") if part.strip())


DEFAULT_DATABASE_URL = "postgresql+asyncpg://sightline:sightline@127.0.0.1:6432/sightline"


@dataclass(frozen=True)
class DatabaseSettings:
    """How a service reaches Postgres: always through PgBouncer in transaction mode."""

    url: str = DEFAULT_DATABASE_URL
    # Per worker process. PgBouncer multiplexes all of these onto its small server pool,
    # so this bounds a worker's concurrency, not Postgres's connection count.
    pool_size: int = 10
    max_overflow: int = 0
    # How long a request may wait for a pooled connection before it is answered 503.
    pool_timeout_s: float = 2.0
    # TCP connect + authentication to PgBouncer.
    connect_timeout_s: float = 2.0
    # Client-side cap on any one statement; the server-side statement_timeout is shorter
    # so Postgres cancels the query itself and the connection stays usable.
    command_timeout_s: float = 15.0
    statement_timeout_ms: int = 10_000

    @classmethod
    def from_env(cls, service: str | None, environ: Mapping[str, str] | None = None) -> DatabaseSettings:
        env = Env(service, os.environ if environ is None else environ)
        return cls(
            url=env.text("DATABASE_URL", cls.url),
            pool_size=env.integer("DB_POOL_SIZE", cls.pool_size),
            max_overflow=env.integer("DB_MAX_OVERFLOW", cls.max_overflow),
            pool_timeout_s=env.number("DB_POOL_TIMEOUT_S", cls.pool_timeout_s),
            connect_timeout_s=env.number("DB_CONNECT_TIMEOUT_S", cls.connect_timeout_s),
            command_timeout_s=env.number("DB_COMMAND_TIMEOUT_S", cls.command_timeout_s),
            statement_timeout_ms=env.integer("DB_STATEMENT_TIMEOUT_MS", cls.statement_timeout_ms),
        )


@dataclass(frozen=True)
class AdminDatabaseSettings:
    """Direct connection to Postgres, bypassing PgBouncer: migrations and admin commands only.

    DDL such as ``CREATE INDEX CONCURRENTLY`` and session-level advisory locks need a real
    session, which transaction pooling does not give.
    """

    url: str = "postgresql+asyncpg://sightline:sightline@127.0.0.1:55432/sightline"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AdminDatabaseSettings:
        env = Env(None, os.environ if environ is None else environ)
        return cls(url=env.text("ADMIN_DATABASE_URL", cls.url))


@dataclass(frozen=True)
class ServerSettings:
    """How Granian serves one service."""

    host: str = "127.0.0.1"
    port: int = 8001
    workers: int = 1
    # Granian's default backpressure (about 1024 open connections per process group) makes
    # a 5000-user load test time out; the app's own limits decide when to shed load instead.
    backpressure: int = 16384

    @classmethod
    def from_env(cls, service: ServiceName, environ: Mapping[str, str] | None = None) -> ServerSettings:
        environ = os.environ if environ is None else environ
        env = Env(service, environ)
        return cls(
            host=env.text("HOST", cls.host),
            # A shared SIGHTLINE_PORT would put three services on one port, so only the
            # per-service name (SIGHTLINE_INGEST_PORT) sets a port.
            port=env.integer("PORT", DEFAULT_PORTS[service], shared=False),
            workers=env.integer("WORKERS", DEFAULT_WORKERS[service]),
            backpressure=env.integer("BACKPRESSURE", cls.backpressure),
        )


@dataclass(frozen=True)
class RateLimitSettings:
    """Per-project token bucket of a read API (query, replay), per worker process; 0 turns it off.

    A dashboard page fires about ten queries at once and a replay viewer a few requests, so a
    burst of 100 serves people in a browser while a script hammering one project is slowed
    before it takes the database's connections from everyone else.
    """

    requests_per_s: float = 20.0
    burst: float = 100.0

    @classmethod
    def from_env(cls, service: ServiceName, environ: Mapping[str, str] | None = None) -> RateLimitSettings:
        env = Env(service, os.environ if environ is None else environ)
        return cls(
            requests_per_s=env.number("RATE_LIMIT_REQUESTS_PER_S", cls.requests_per_s),
            burst=env.number("RATE_LIMIT_BURST", cls.burst),
        )


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"

    @classmethod
    def from_env(cls, service: str | None, environ: Mapping[str, str] | None = None) -> LogSettings:
        env = Env(service, os.environ if environ is None else environ)
        return cls(level=env.text("LOG_LEVEL", cls.level).upper())


@dataclass(frozen=True)
class StackSettings:
    """The local stack that ``sightline up`` runs without Docker."""

    data_dir: Path = field(default_factory=lambda: Path(".data").resolve())
    pg_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    postgres_port: int = 55432
    pgbouncer_port: int = 6432
    pgbouncer_bin: str = "pgbouncer"
    # Postgres's own limit stays at a size a 2-core machine handles well; PgBouncer's
    # server pool is what every service shares.
    postgres_max_connections: int = 100
    pgbouncer_pool_size: int = 30
    pgbouncer_max_client_conn: int = 10_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackSettings:
        env = Env(None, os.environ if environ is None else environ)
        return cls(
            data_dir=Path(env.text("DATA_DIR", ".data")).resolve(),
            pg_bin_dir=Path(env.text("PG_BIN_DIR", str(cls.pg_bin_dir))),
            postgres_port=env.integer("POSTGRES_PORT", cls.postgres_port),
            pgbouncer_port=env.integer("PGBOUNCER_PORT", cls.pgbouncer_port),
            pgbouncer_bin=env.text("PGBOUNCER_BIN", cls.pgbouncer_bin),
            postgres_max_connections=env.integer("POSTGRES_MAX_CONNECTIONS", cls.postgres_max_connections),
            pgbouncer_pool_size=env.integer("PGBOUNCER_POOL_SIZE", cls.pgbouncer_pool_size),
            pgbouncer_max_client_conn=env.integer("PGBOUNCER_MAX_CLIENT_CONN", cls.pgbouncer_max_client_conn),
        )
