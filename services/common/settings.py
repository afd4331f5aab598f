"""Settings, one small object per concern, read from the environment.

Every value can be set for all services (``SIGHTLINE_DB_POOL_SIZE``) or for one service
(``SIGHTLINE_INGEST_DB_POOL_SIZE``); the per-service name wins. Settings objects are built
once, in an app factory or a command, and passed down; tests build their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

ServiceName = Literal["ingest", "query", "replay"]
SERVICES: tuple[ServiceName, ...] = ("ingest", "query", "replay")

DEFAULT_PORTS: dict[ServiceName, int] = {"ingest": 8001, "query": 8002, "replay": 8003}
# Ingest takes the tracker traffic, which needs more than one core's worth of Python at
# the seed load; reads are light and wait mostly on Postgres.
DEFAULT_WORKERS: dict[ServiceName, int] = {"ingest": 2, "query": 1, "replay": 1}


N = TypeVar("N", int, float)


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

    def text(self, name: str, default: str, *, shared: bool = True) -> str:
        value = self.raw(name, shared=shared)
        return default if value is None or value == "" else value

    def integer(self, name: str, default: int, *, shared: bool = True) -> int:
        return self._parsed(name, default, int, "an integer", shared=shared)

    def number(self, name: str, default: float, *, shared: bool = True) -> float:
        return self._parsed(name, default, float, "a number", shared=shared)

    def _parsed(self, name: str, default: N, parse: Callable[[str], N], kind: str, *, shared: bool) -> N:
        value = self.raw(name, shared=shared)
        if value is None or value == "":
            return default
        try:
            return parse(value)
        except ValueError as exc:
            raise SettingsError(f"SIGHTLINE_{name} must be {kind}, got {value!r}") from exc

    def items(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        return tuple(part.strip() for part in value.split(",") if part.strip())

    def typed(self, name: str, default: Any, *, shared: bool = True) -> Any:
        """The value parsed as the default's type: bool, int, float, str, tuple of str, or Path."""
        if isinstance(default, bool):
            value = self.raw(name, shared=shared)
            if value is None or value == "":
                return default
            return value.strip().lower() not in ("off", "0", "false", "no")
        if isinstance(default, int):
            return self.integer(name, default, shared=shared)
        if isinstance(default, float):
            return self.number(name, default, shared=shared)
        if isinstance(default, tuple):
            return self.items(name, default)
        if isinstance(default, Path):
            return Path(self.text(name, str(default), shared=shared))
        return self.text(name, default, shared=shared)


def setting(name: str, default: Any, *, shared: bool = True) -> Any:
    """A settings field read from SIGHTLINE_<SERVICE>_<name>, else SIGHTLINE_<name> (unless not shared)."""
    return field(default=default, metadata={"env": name, "shared": shared})


S = TypeVar("S")


def load_settings(cls: type[S], service: str | None, environ: Mapping[str, str] | None = None, **defaults: Any) -> S:
    """An instance of the settings dataclass cls with every `setting()` field read from the environment.

    defaults replace a field's declared default (a service's own port, say) before the lookup.
    """
    env = Env(service, os.environ if environ is None else environ)
    values = {
        item.name: env.typed(
            item.metadata["env"], defaults.get(item.name, item.default), shared=item.metadata["shared"]
        )
        for item in fields(cls)  # type: ignore[arg-type]
        if "env" in item.metadata
    }
    return cls(**values)


def linked_service_url(service: ServiceName, variable: str, environ: Mapping[str, str] | None = None) -> str:
    """Another service's base URL as the browser reaches it (the pages link to each other).

    SIGHTLINE_<variable> when set (an http(s) URL), else 127.0.0.1 on that service's port.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(f"SIGHTLINE_{variable}", "").strip()
    if not value:
        return f"http://127.0.0.1:{ServerSettings.from_env(service, environ).port}"
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SettingsError(f"SIGHTLINE_{variable} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


DEFAULT_DATABASE_URL = "postgresql+asyncpg://sightline:sightline@127.0.0.1:6432/sightline"


@dataclass(frozen=True)
class DatabaseSettings:
    """How a service reaches Postgres: always through PgBouncer in transaction mode."""

    url: str = setting("DATABASE_URL", DEFAULT_DATABASE_URL)
    # Per worker process. PgBouncer multiplexes all of these onto its small server pool,
    # so this bounds a worker's concurrency, not Postgres's connection count.
    pool_size: int = setting("DB_POOL_SIZE", 10)
    max_overflow: int = setting("DB_MAX_OVERFLOW", 0)
    # How long a request may wait for a pooled connection before it is answered 503.
    pool_timeout_s: float = setting("DB_POOL_TIMEOUT_S", 2.0)
    # TCP connect + authentication to PgBouncer.
    connect_timeout_s: float = setting("DB_CONNECT_TIMEOUT_S", 2.0)
    # Client-side cap on any one statement; the server-side statement_timeout is shorter
    # so Postgres cancels the query itself and the connection stays usable.
    command_timeout_s: float = setting("DB_COMMAND_TIMEOUT_S", 15.0)
    statement_timeout_ms: int = setting("DB_STATEMENT_TIMEOUT_MS", 10_000)

    @classmethod
    def from_env(cls, service: str | None, environ: Mapping[str, str] | None = None) -> DatabaseSettings:
        return load_settings(cls, service, environ)


@dataclass(frozen=True)
class AdminDatabaseSettings:
    """Direct connection to Postgres, bypassing PgBouncer: migrations and admin commands only.

    DDL such as ``CREATE INDEX CONCURRENTLY`` and session-level advisory locks need a real
    session, which transaction pooling does not give.
    """

    url: str = setting("ADMIN_DATABASE_URL", "postgresql+asyncpg://sightline:sightline@127.0.0.1:55432/sightline")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AdminDatabaseSettings:
        return load_settings(cls, None, environ)

    @classmethod
    def from_env_if_set(cls, environ: Mapping[str, str] | None = None) -> AdminDatabaseSettings | None:
        """Only where SIGHTLINE_ADMIN_DATABASE_URL is set: a service is given the owner's URL
        on purpose (ingest, for partition upkeep), never by falling back to the default."""
        environ = os.environ if environ is None else environ
        return cls.from_env(environ) if environ.get("SIGHTLINE_ADMIN_DATABASE_URL") else None


@dataclass(frozen=True)
class ServerSettings:
    """How Granian serves one service."""

    host: str = setting("HOST", "127.0.0.1")
    # A shared SIGHTLINE_PORT would put three services on one port, so only the
    # per-service name (SIGHTLINE_INGEST_PORT) sets a port.
    port: int = setting("PORT", 8001, shared=False)
    workers: int = setting("WORKERS", 1)
    # Granian's default backpressure (about 1024 open connections per process group) makes
    # a 5000-user load test time out; the app's own limits decide when to shed load instead.
    backpressure: int = setting("BACKPRESSURE", 16384)

    @classmethod
    def from_env(cls, service: ServiceName, environ: Mapping[str, str] | None = None) -> ServerSettings:
        return load_settings(cls, service, environ, port=DEFAULT_PORTS[service], workers=DEFAULT_WORKERS[service])


@dataclass(frozen=True)
class RateLimitSettings:
    """Per-project token bucket of a read API (query, replay), per worker process; 0 turns it off.

    A dashboard page fires about ten queries at once and a replay viewer a few requests, so a
    burst of 100 serves people in a browser while a script hammering one project is slowed
    before it takes the database's connections from everyone else.
    """

    requests_per_s: float = setting("RATE_LIMIT_REQUESTS_PER_S", 20.0)
    burst: float = setting("RATE_LIMIT_BURST", 100.0)

    @classmethod
    def from_env(cls, service: ServiceName, environ: Mapping[str, str] | None = None) -> RateLimitSettings:
        return load_settings(cls, service, environ)


@dataclass(frozen=True)
class LogSettings:
    level: str = setting("LOG_LEVEL", "INFO")

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", self.level.upper())

    @classmethod
    def from_env(cls, service: str | None, environ: Mapping[str, str] | None = None) -> LogSettings:
        return load_settings(cls, service, environ)


@dataclass(frozen=True)
class StackSettings:
    """The local stack that ``sightline up`` runs without Docker."""

    # Relative paths are taken from the working directory, once, when the settings are made.
    data_dir: Path = setting("DATA_DIR", Path(".data"))
    pg_bin_dir: Path = setting("PG_BIN_DIR", Path("/usr/lib/postgresql/15/bin"))
    postgres_port: int = setting("POSTGRES_PORT", 55432)
    pgbouncer_port: int = setting("PGBOUNCER_PORT", 6432)
    pgbouncer_bin: str = setting("PGBOUNCER_BIN", "pgbouncer")
    # Postgres's own limit stays at a size a 2-core machine handles well; PgBouncer's
    # server pool is what every service shares.
    postgres_max_connections: int = setting("POSTGRES_MAX_CONNECTIONS", 100)
    pgbouncer_pool_size: int = setting("PGBOUNCER_POOL_SIZE", 30)
    pgbouncer_max_client_conn: int = setting("PGBOUNCER_MAX_CLIENT_CONN", 10_000)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", self.data_dir.resolve())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackSettings:
        return load_settings(cls, None, environ)
