"""The one place that knows how services talk to Postgres: through PgBouncer, transaction mode.

Engines are created in each app's lifespan (never at import) and disposed on shutdown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.common.errors import StatementTimeoutLost, is_lost_statement_timeout
from services.common.settings import AdminDatabaseSettings, DatabaseSettings
from services.common.telemetry import step_span

logger = logging.getLogger(__name__)


def _unnamed_statement() -> str:
    # An empty name makes asyncpg use Postgres's unnamed prepared statement, which lives
    # only until the next Parse on that server connection. PgBouncer 1.18 in transaction
    # mode hands each transaction a different server connection and does not track
    # prepared statements, so named ones ("__asyncpg_stmt_N__") either vanish between
    # transactions ("does not exist") or collide with another client's leftovers
    # ("already exists") and pile up on the server. SQLAlchemy always runs statements
    # inside a transaction, so prepare and execute land on the same server connection.
    return ""


def create_engine(service_name: str, settings: DatabaseSettings) -> AsyncEngine:
    """Engine for a service's requests; every connection goes through PgBouncer."""
    engine = create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_s,
        # PgBouncer closes idle client links only if told to; recycling keeps the pool
        # healthy across PgBouncer restarts without a ping on every checkout.
        pool_recycle=300,
        connect_args=_asyncpg_connect_args(f"sightline-{service_name}", settings),
    )
    event.listen(engine.sync_engine, "connect", _learn_array_codecs)
    event.listen(engine.sync_engine, "handle_error", _raise_lost_statement_timeout)
    return engine


# The built-in array types the services' statements bind or return, by oid (fixed for
# built-in types): date[], bigint[], integer[], timestamptz[], bytea[], uuid[],
# double precision[], numeric[], boolean[]. (text[] and oid[] asyncpg knows already.)
_ARRAY_TYPE_OIDS = (1182, 1016, 1007, 1185, 1001, 2951, 1022, 1231, 1000)
# asyncpg's catalog rows for them, read once per process (key "rows").
_ARRAY_TYPE_ROWS: dict[str, Any] = {}


def _learn_array_codecs(dbapi_connection: Any, _record: object) -> None:
    """``connect`` listener: the connection knows the array codecs before its first statement.

    asyncpg learns an array type's codec by querying the catalog (a recursive CTE), once per
    connection, inside whatever transaction first binds or returns one. That query costs with
    the catalog's size: ~2 s for these nine types on the Citus test coordinator after the
    ingest tests' partitions, and 2-3 s for date[] alone under the query service's
    transactions, which turn nested loops off (auto_explain: 2.1-2.9 s each). So it is read
    once per process, in a transaction of its own (asyncpg's session-level jit off and back on
    then stay on one PgBouncer server connection), and every later connection is handed the
    rows: no catalog query at all.
    """
    dbapi_connection.run_async(_register_array_codecs)


async def _register_array_codecs(driver: asyncpg.Connection) -> None:
    try:
        if "rows" not in _ARRAY_TYPE_ROWS:
            async with driver.transaction():
                rows, _ = await driver._introspect_types(_ARRAY_TYPE_OIDS, None)
            _ARRAY_TYPE_ROWS["rows"] = rows
        driver._protocol.get_settings().register_data_types(_ARRAY_TYPE_ROWS["rows"])
    except (AttributeError, TypeError) as exc:  # asyncpg's internals moved: it learns them itself, later
        logger.warning("array codecs not preloaded (asyncpg internals changed?): %r", exc)


def _asyncpg_connect_args(application_name: str, settings: DatabaseSettings) -> dict[str, Any]:
    return {
        # No client-side statement caches: see _unnamed_statement.
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unnamed_statement,
        "timeout": settings.connect_timeout_s,
        "command_timeout": settings.command_timeout_s,
        # PgBouncer passes these startup parameters to every server connection it pairs
        # with this client (application_name is tracked by PgBouncer; statement_timeout is
        # set per transaction where the transaction begins, see statement_timeout()).
        "server_settings": {"application_name": application_name},
    }


def create_admin_engine(settings: AdminDatabaseSettings) -> AsyncEngine:
    """Direct engine for migrations and admin commands, never for request handling."""
    return create_async_engine(
        settings.url,
        pool_size=2,
        max_overflow=0,
        connect_args={"server_settings": {"application_name": "sightline-admin"}},
    )


async def set_statement_timeout(connection: AsyncConnection, timeout_ms: int) -> None:
    """Cap every statement of the current transaction.

    ``SET LOCAL`` ends with the transaction, which is the only scope that is safe in
    transaction pooling: a plain ``SET`` would stick to a server connection that the next
    transaction, from another client, inherits.
    """
    await connection.execute(
        text("SELECT set_config('statement_timeout', :value, true)"), {"value": f"{int(timeout_ms)}ms"}
    )


# connection.info key: (timeout_ms, time.monotonic() when it was set) while statement_timeout() runs.
_STATEMENT_TIMEOUT = "sightline.statement_timeout"


@asynccontextmanager
async def statement_timeout(connection: AsyncConnection, timeout_ms: int) -> AsyncIterator[None]:
    """The block's statements capped by set_statement_timeout(), and a timeout that the driver
    lost raised as the timeout it was (StatementTimeoutLost, see _raise_lost_statement_timeout)."""
    await set_statement_timeout(connection, timeout_ms)
    info = connection.info  # held: an invalidated connection refuses to hand it out again
    info[_STATEMENT_TIMEOUT] = (timeout_ms, time.monotonic())
    try:
        yield
    finally:
        info.pop(_STATEMENT_TIMEOUT, None)


def _raise_lost_statement_timeout(context: ExceptionContext) -> None:
    """``handle_error`` listener: asyncpg's lost statement timeout raised as StatementTimeoutLost.

    Raised where the statement runs, so that a service's own timeout handling (an exact funnel's
    advice) sees it too, not only the exception handler. The connection is still discarded (its
    protocol state is lost), but not the pool's other connections: nothing happened to the server.
    """
    if context.connection is None or context.sqlalchemy_exception is None:
        return
    timing = context.connection.info.get(_STATEMENT_TIMEOUT)
    if timing is None:
        return
    timeout_ms, started = timing
    if is_lost_statement_timeout(context.sqlalchemy_exception, (time.monotonic() - started) * 1000, timeout_ms):
        context.invalidate_pool_on_disconnect = False
        raise StatementTimeoutLost(
            f"statement timeout of {timeout_ms} ms, its error lost by the driver"
        ) from context.sqlalchemy_exception


async def set_read_only(connection: AsyncConnection) -> None:
    """The current transaction may not write, whatever a statement says; must come first in it."""
    await connection.execute(text("SET TRANSACTION READ ONLY"))


async def asyncpg_connection(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a pooled SQLAlchemy one, for the few hot paths that skip the adapter.

    Statements with parameters on it must run inside a transaction (asyncpg's ``transaction()``,
    or one that SQLAlchemy began): see _unnamed_statement. A script without parameters goes as
    one simple-protocol message and needs none (the ingest writer's batches).
    """
    driver = (await connection.get_raw_connection()).driver_connection
    if not isinstance(driver, asyncpg.Connection):
        raise RuntimeError("the pooled connection has no asyncpg connection")
    return driver


@asynccontextmanager
async def read_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection for reads (SQLAlchemy begins a transaction on first use).

    The wait for it gets its own span, like in transaction().
    """
    with step_span("db.pool_checkout"):
        pooled = await engine.connect().start()
    try:
        yield pooled
    finally:
        await pooled.close()


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction, committed when the block ends, rolled back if it raises.

    The wait for a pooled connection gets its own span: under load it is where time goes
    when a worker's pool is too small.
    """
    with step_span("db.pool_checkout"):
        connection = await engine.connect().start()
    try:
        async with connection.begin():
            yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def admin_transaction(settings: AdminDatabaseSettings) -> AsyncIterator[AsyncConnection]:
    """A one-off direct transaction for a command: its own engine, committed, then disposed."""
    engine = create_admin_engine(settings)
    try:
        async with engine.begin() as connection:
            yield connection
    finally:
        await engine.dispose()
