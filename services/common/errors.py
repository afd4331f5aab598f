"""One error shape for every service: ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.status_codes import (
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ExceptionHandlersMap
from sqlalchemy import exc as sa_exc

logger = logging.getLogger(__name__)

# Seconds a client should wait before retrying when the database is unreachable: the base of
# a jittered value (retry_after_s), so clients refused together do not return together.
DATABASE_RETRY_AFTER_S = 2
# The longest base a refusal's Retry-After grows to (the answer is up to twice it): past this a
# long outage would keep clients away after the database is back.
MAX_RETRY_AFTER_BASE_S = 15.0
# Each this many seconds the database has been unavailable add one second to Retry-After's base.
# Not faster: a tracker holds one delivery in flight, so however long the outage, about one
# refused delivery per visitor and kind waits when it ends (the fault run: first attempts fall
# to 0 within 5 s of a refusal), and the window only has to spread those. At one second per
# 5 s the last clients refused in a 10-s outage came back up to 12 s after it (4-8 s, plus the
# tracker's half again), so the traffic was not back at its level within 10 s; at one per
# 10 s they are back within 9 s, and a minute's outage still spreads them over 8-24 s.
OUTAGE_S_PER_RETRY_AFTER_S = 10.0
# Failures further apart than this are two outages, not one: with no failure for this long the
# outage is over even if nothing succeeded since (a process with no traffic sees no success).
OUTAGE_GAP_S = 5.0


def retry_after_s(backlog: float = DATABASE_RETRY_AFTER_S - 1) -> int:
    """Seconds to tell a refused client: 1 s plus one per unit of backlog, plus up to as much again at random.

    ``backlog`` is how far past capacity the process is (for admission, queued / capacity; for
    the database, how long it has been away, see DatabaseOutage). A fixed value made every
    refused client return in the same second (after a 10 s database outage, `make chaos` saw
    ~250-request spikes every 5 s); a window that widens with the backlog spreads the returns so
    the queue drains between them.
    """
    base = min(1.0 + max(backlog, 0.0), MAX_RETRY_AFTER_BASE_S)
    return max(1, math.ceil(base + random.uniform(0.0, base)))


class DatabaseOutage:
    """How long this process has found the database unavailable: what a 503's Retry-After grows with.

    Every refusal that blames the database reports it (``failed``); a commit or a ready probe
    that worked ends it (``recovered``), and so does a pause of OUTAGE_GAP_S without failures.
    The longer the outage, the more clients hold a refused delivery and the more come back
    when it ends, so the later a client is refused, the wider the window its return is drawn
    from (2-4 s at first, 4-8 s after 20 s, 8-16 s after a minute, at most 15-30 s).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None
        self._last_failure = 0.0

    def failed(self, since: float | None = None) -> None:
        """The database failed a request; ``since``: when that request began to wait for it."""
        now = self._clock()
        began = now if since is None else min(since, now)
        if self._since is None or now - self._last_failure > OUTAGE_GAP_S:
            self._since = began
        else:
            self._since = min(self._since, began)
        self._last_failure = now

    def recovered(self) -> None:
        self._since = None

    def seconds(self) -> float:
        now = self._clock()
        if self._since is None or now - self._last_failure > OUTAGE_GAP_S:
            return 0.0
        return now - self._since

    def backlog(self) -> float:
        return self.seconds() / OUTAGE_S_PER_RETRY_AFTER_S

    def retry_after_s(self, backlog: float = DATABASE_RETRY_AFTER_S - 1) -> int:
        """retry_after_s() for a refusal with this backlog of its own, widened by the outage."""
        return retry_after_s(backlog + self.backlog())


# One per process (each Granian worker is one): the database is away for the whole process at once.
DATABASE_OUTAGE = DatabaseOutage()


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class ApiError(Exception):
    """An error the client should see as-is, raised from routes and services."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


class ServiceUnavailable(ApiError):
    """503 with Retry-After: the given seconds, or by default a jittered 2-4 s that widens with how
    long the database has been away (DATABASE_OUTAGE)."""

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        seconds = DATABASE_OUTAGE.retry_after_s() if retry_after is None else retry_after
        super().__init__(HTTP_503_SERVICE_UNAVAILABLE, code, message, headers={"Retry-After": str(seconds)})


MALFORMED_REQUEST = "The request is malformed, for example a body that is not JSON"


def error_responses(descriptions: dict[int, str]) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer, all with the error body.

    400 is always listed: otherwise Litestar documents its own 400 body (``detail``,
    ``status_code``), which is not what our exception handlers answer.
    """
    return {
        status: ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)
        for status, description in {400: MALFORMED_REQUEST, **descriptions}.items()
    }


def error_response(
    status_code: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(
        ErrorBody(ErrorDetail(code=code, message=message, field=field)),
        status_code=status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


class JsonBodyRequest(Request[Any, Any, Any]):
    """A request whose undecodable JSON body is the client's 400 ``malformed_json``.

    Litestar turns msgspec's DecodeError into a 400 itself, but lets the UnicodeDecodeError
    (invalid UTF-8 inside a string) and the RecursionError (nesting deeper than msgspec
    follows) that the same decoder raises through, which would be our 500.
    """

    async def json(self) -> Any:
        try:
            return await super().json()
        except (SerializationException, UnicodeDecodeError) as exc:
            raise ApiError(400, "malformed_json", "The body is not valid UTF-8 JSON.") from exc
        except RecursionError as exc:
            raise ApiError(400, "malformed_json", "The body's JSON is nested too deeply.") from exc


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[ErrorBody]:
    return error_response(exc.status_code, exc.code, exc.message, exc.field, exc.headers)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    # Litestar reports body and parameter validation failures as a list; the first one
    # names the field, which is what a client needs to fix its request.
    field: str | None = None
    message = exc.detail
    if isinstance(exc.extra, list) and exc.extra:
        first = exc.extra[0]
        if isinstance(first, dict):
            key = first.get("key")
            field = str(key) if key else None
            message = str(first.get("message") or message)
    return error_response(HTTP_422_UNPROCESSABLE_ENTITY, "invalid_request", message, field)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    code = {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
        429: "rate_limited",
    }.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, exc.detail, headers=exc.headers)


def _driver_error(exc: BaseException) -> BaseException:
    # SQLAlchemy wraps asyncpg's exception in its adapter's exception, wrapped in a DBAPIError.
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        return exc.orig.__cause__ or exc.orig
    return exc


def is_database_unavailable(exc: BaseException) -> bool:
    """True when the database could not be reached in time, as opposed to a bug in a query."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection within pool_timeout
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        _driver_error(exc),
        OSError  # refused, reset, and connect timeouts (TimeoutError is an OSError)
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.TooManyConnectionsError
        | asyncpg.AdminShutdownError
        | asyncpg.InterfaceError,
    )


def describe_database_error(exc: BaseException) -> str:
    """What a log line needs to tell one database failure from another, without the statement.

    The wrapper's class alone ("InternalError") does not say whether the server sent an error
    (its SQLSTATE and message), the driver gave up on the protocol, or the connection closed
    under the request. The statement and its parameters are left out: they hold personal data.
    """
    driver = _driver_error(exc)
    sqlstate = getattr(driver, "sqlstate", None)
    first_line = str(driver).splitlines()[0] if str(driver) else ""
    closed = isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    return (
        f"{type(exc).__name__} from {type(driver).__module__}.{type(driver).__name__}"
        + (f" [{sqlstate}]" if sqlstate else "")
        + (f": {first_line[:200]}" if first_line else "")
        + (" (connection closed)" if closed else "")
    )


class StatementTimeoutLost(Exception):
    """A statement timeout whose error the driver lost on its way.

    Postgres times a statement from its Parse. asyncpg prepares a statement (Parse, Describe,
    Flush) and binds it once the answer is in; when the timeout fires just after the Describe's
    answer, the error arrives while asyncpg expects nothing. asyncpg then fails the bind with an
    InternalClientError ("cannot switch to state 12; another operation (2) is in progress") and
    closes the connection, and the server's error is gone (asyncpg issue #1069). Read as a
    dropped connection it was a 503 database_unavailable, which also widened every refusal's
    Retry-After. Inside db.statement_timeout(), the engine raises this instead once the
    statements have run past the timeout (db._raise_lost_statement_timeout).
    """


def is_lost_statement_timeout(exc: BaseException, elapsed_ms: float, timeout_ms: int) -> bool:
    """``exc`` is asyncpg's protocol error in a transaction whose statements ran past ``timeout_ms``.

    Before the timeout, the same error cannot be the timeout's: it stays what it was.
    """
    return isinstance(_driver_error(exc), asyncpg.InternalClientError) and elapsed_ms >= timeout_ms


def is_statement_timeout(exc: BaseException) -> bool:
    return isinstance(exc, StatementTimeoutLost) or isinstance(_driver_error(exc), asyncpg.QueryCanceledError)


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if is_database_unavailable(exc):
        logger.warning("database unavailable: %s", describe_database_error(exc))
        DATABASE_OUTAGE.failed()
        return error_response(
            HTTP_503_SERVICE_UNAVAILABLE,
            "database_unavailable",
            "The database cannot be reached right now; retry later.",
            headers={"Retry-After": str(DATABASE_OUTAGE.retry_after_s())},
        )
    if is_statement_timeout(exc):
        return error_response(
            HTTP_503_SERVICE_UNAVAILABLE,
            "query_timeout",
            "The query took longer than the statement timeout allows; narrow the date range or filters.",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "Internal server error.")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ApiError: _api_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected_error,
}
