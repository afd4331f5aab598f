"""HTTP only: parse, authorise, call the service, shape the response."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from litestar import Controller, Request, delete, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.app import provide_read_transaction, provide_write_transaction
from services.common.auth import provide_read_project
from services.common.errors import ApiError, error_responses
from services.common.project_repository import ProjectRecord
from services.replay.repository import SessionFilters
from services.replay.schemas import PersonDeletion, SessionDetail, SessionPage
from services.replay.service import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, RecordingFormat, ReplayService

# A session id is what ingest accepts and stores: 1 to 200 characters, no NUL (which
# Postgres refuses in text). Anything else cannot name a stored session.
SESSION_ID_MAX_LENGTH = 200
# Offsets are ms from the session's start; a cap far beyond any session keeps the
# arithmetic inside datetime's range.
MAX_OFFSET_MS = 10 * 365 * 24 * 3600 * 1000

RECORDING_DESCRIPTION = f"""
The session's rrweb events in time order, **streamed**: chunks are read from the database in
small batches by `seq` (the order the tracker recorded them, whatever order they arrived in)
and the first bytes leave before the last chunk is read.

**Seeking:** `from` and `to` are offsets in ms from the session's start. The stream begins at
the nearest chunk at or before `from` that holds an rrweb full snapshot (type 2), so a player
can render from there, and ends with the last chunk that begins at or before `to`. The header
`X-Replay-Start-Offset-Ms` tells where the first streamed chunk begins; `X-Replay-First-Seq`,
`X-Replay-Last-Seq` and `X-Replay-Chunk-Count` describe the chunks streamed.

**Two formats, chosen with `Accept`:**

- `{RecordingFormat.NDJSON.value}` (default): one line per chunk, each line the JSON
  body the tracker sent, `{{"projectKey", "sessionId", "distinctId", "seq", "events": [...]}}`,
  decompressed by the server. Not compressed on the wire.
- `{RecordingFormat.CHUNK_FRAMES.value}`: the stored bytes passed through as the
  tracker sent them (usually gzip), never recompressed. The body is a sequence of frames; each
  frame is one line of JSON `{{"seq": N, "contentEncoding": "gzip"|"identity", "byteSize": L}}`
  followed by exactly `L` bytes of that chunk. A browser inflates each gzip frame with its own
  `new DecompressionStream("gzip")`.

Why not `Content-Encoding: gzip` over the concatenated stored gzip members (a valid gzip
stream by RFC 1952)? Chromium's HTTP decoder decodes only the first member of such a body and
silently drops the rest, and `DecompressionStream("gzip")` rejects a second member; so a
browser player would play only the first chunk.
"""


def _session_id(session_id: str) -> str:
    if not 1 <= len(session_id) <= SESSION_ID_MAX_LENGTH or "\x00" in session_id:
        raise ApiError(422, "invalid_session_id", "A session id is 1 to 200 characters without NUL.", field="id")
    return session_id


# Query parameters are named in Python as on the wire (camelCase): Litestar's validation
# errors name the Python argument, and the error body's "field" must name what the client sent.
# "from" is a keyword, so it arrives as text and is checked here.
def _offset_ms(field: str, value: str | None) -> int | None:
    if value is None:
        return None
    # The length check comes first: int() refuses (with an error) strings over 4300 digits.
    if len(value) > 15 or not value.isascii() or not value.isdigit() or int(value) > MAX_OFFSET_MS:
        raise ApiError(
            422, "invalid_window", f"'{field}' must be a whole number of ms from 0 to {MAX_OFFSET_MS}.", field=field
        )
    return int(value)


def _datetime(field: str, value: str | None) -> datetime | None:
    # Parsed here rather than by the framework, whose conversion errors name the Python
    # argument instead of the query parameter the client sent.
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        # Without an offset, UTC: the zone every timestamp is stored in. Converting now
        # also refuses instants at the very edge of datetime's range (year 1 at +14:00).
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ApiError(422, "invalid_date", f"{field} must be an ISO 8601 date or date-time.", field=field) from exc


def _text(field: str, value: str | None) -> str | None:
    # Postgres refuses NUL in text; refused here, it is the client's 422, not our 500.
    if value is not None and "\x00" in value:
        raise ApiError(422, "invalid_request", f"{field} must not contain NUL characters.", field=field)
    return value


PERSONS_PREFIX = "/v1/persons/"


def _exact_path_tail(request: Request[Any, Any, Any], prefix: str, decoded: str) -> str:
    """What follows prefix in the path as the client sent it, percent-decoded once.

    A ``path`` parameter arrives normalised ("a//b/" becomes "/a/b"); the raw path keeps
    every character of an id, so erasure deletes exactly the id that was named.
    """
    raw_path = request.scope.get("raw_path")
    if isinstance(raw_path, bytes):
        # Some servers (and test transports) leave the query string on; an unencoded "?" ends the path.
        raw = raw_path.decode("latin-1").partition("?")[0]
        if raw.startswith(prefix):
            return unquote(raw[len(prefix) :], errors="replace")
    return decoded.removeprefix("/")


def _recording_format(request: Request[Any, Any, Any]) -> RecordingFormat:
    accept = request.headers.get("accept", "")
    if RecordingFormat.CHUNK_FRAMES.value in accept.lower():
        return RecordingFormat.CHUNK_FRAMES
    return RecordingFormat.NDJSON


@dataclass
class RecordingOperation(Operation):
    """The recording's 200 in the OpenAPI document: a stream in one of two formats, not JSON.

    Litestar documents a Stream response as the handler's single media type (JSON by
    default); this one answers whichever format Accept chose.
    """

    def __post_init__(self) -> None:
        ok = self.responses.get("200") if self.responses else None
        if isinstance(ok, OpenAPIResponse):
            stream = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY))
            ok.content = {output.value: stream for output in RecordingFormat}
            ok.description = "The recording, streamed in the format Accept chose (see the description)"


AUTH_ERRORS = {
    401: "Missing or wrong secret key",
    429: "The project is over its rate limit; retry after Retry-After seconds",
    503: "The database cannot be reached; retry later",
}


class ReplayController(Controller):
    path = "/v1"
    tags = ["replay"]
    # A handler that names "connection" runs in the request's read-only transaction (erasure: a
    # write one); the recording names none, since it reads in short reads of its own.
    dependencies = {"project": Provide(provide_read_project), "connection": Provide(provide_read_transaction)}

    @get(
        "/sessions",
        summary="Recorded sessions, newest first",
        description=(
            "Cursor pagination: pass `nextCursor` back as `cursor` for the next, older page; a page never"
            " repeats or skips a session because newer sessions arrived in between. `urlContains` matches"
            " the first URL or any pageview URL of the session, case-insensitively. `page`, `referrer` and"
            " `utm*` are the dashboard's filters of the same names: a path the session has an event on, and"
            " the visit's source (its first event's referrer domain and UTM tags), matched exactly."
        ),
        responses=error_responses({**AUTH_ERRORS, 422: "A filter, the limit or the cursor is malformed"}),
    )
    async def list_sessions(
        self,
        project: NamedDependency[ProjectRecord],
        connection: NamedDependency[AsyncConnection],
        state: State,
        cursor: Annotated[str | None, QueryParameter(max_length=400)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        dateFrom: Annotated[
            str | None,
            QueryParameter(
                name="dateFrom", format="date-time", description="Sessions that started at or after this (ISO 8601)"
            ),
        ] = None,
        dateTo: Annotated[
            str | None,
            QueryParameter(name="dateTo", format="date-time", description="Sessions that started before this"),
        ] = None,
        minDurationMs: Annotated[int | None, QueryParameter(ge=0, le=MAX_OFFSET_MS)] = None,
        distinctId: Annotated[str | None, QueryParameter(min_length=1, max_length=200)] = None,
        urlContains: Annotated[str | None, QueryParameter(min_length=1, max_length=500)] = None,
        country: Annotated[
            str | None, QueryParameter(pattern="^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2 code")
        ] = None,
        browser: Annotated[str | None, QueryParameter(min_length=1, max_length=100)] = None,
        os: Annotated[
            str | None, QueryParameter(min_length=1, max_length=100, description="Operating system, e.g. iOS")
        ] = None,
        device: Annotated[
            str | None, QueryParameter(min_length=1, max_length=20, description="desktop, mobile, tablet or other")
        ] = None,
        page: Annotated[
            str | None,
            QueryParameter(
                min_length=1, max_length=2000, description="A path the session has an event on, exactly (e.g. /pricing)"
            ),
        ] = None,
        referrer: Annotated[
            str | None,
            QueryParameter(
                min_length=1,
                max_length=500,
                description="The visit's source: its first event's referrer domain (e.g. news.ycombinator.com)",
            ),
        ] = None,
        utmSource: Annotated[str | None, QueryParameter(min_length=1, max_length=500)] = None,
        utmMedium: Annotated[str | None, QueryParameter(min_length=1, max_length=500)] = None,
        utmCampaign: Annotated[str | None, QueryParameter(min_length=1, max_length=500)] = None,
        bots: Annotated[
            Literal["exclude", "include"],
            QueryParameter(
                description="Sessions of crawlers (device type 'bot') are left out, as the dashboard leaves out"
                " their events; 'include' lists them too."
            ),
        ] = "exclude",
    ) -> SessionPage:
        filters = SessionFilters(
            started_from=_datetime("dateFrom", dateFrom),
            started_before=_datetime("dateTo", dateTo),
            min_duration_ms=minDurationMs,
            distinct_id=_text("distinctId", distinctId),
            url_contains=_text("urlContains", urlContains),
            country=country,
            browser=_text("browser", browser),
            os=_text("os", os),
            device_type=_text("device", device),
            page=_text("page", page),
            referrer=_text("referrer", referrer),
            utm_source=_text("utmSource", utmSource),
            utm_medium=_text("utmMedium", utmMedium),
            utm_campaign=_text("utmCampaign", utmCampaign),
            include_bots=bots == "include",
        )
        service: ReplayService = state.replay_service
        return await service.list_sessions(connection, project.project_id, filters, cursor=cursor, limit=limit)

    @get(
        "/sessions/{session_id:str}",
        summary="One session's metadata and its chunk index",
        responses=error_responses(
            {**AUTH_ERRORS, 404: "No such session in this project", 422: "The session id is malformed"}
        ),
    )
    async def get_session(
        self,
        project: NamedDependency[ProjectRecord],
        connection: NamedDependency[AsyncConnection],
        state: State,
        session_id: FromPath[str],
    ) -> SessionDetail:
        service: ReplayService = state.replay_service
        return await service.session_detail(connection, project.project_id, _session_id(session_id))

    @get(
        "/sessions/{session_id:str}/recording",
        summary="The session's rrweb events, streamed, from the nearest full snapshot before `from`",
        description=RECORDING_DESCRIPTION,
        operation_class=RecordingOperation,
        responses=error_responses(
            {
                **AUTH_ERRORS,
                404: "No such session in this project",
                422: "The session id or the window is malformed",
            }
        ),
    )
    async def recording(
        self,
        request: Request[Any, Any, Any],
        project: NamedDependency[ProjectRecord],
        state: State,
        session_id: FromPath[str],
        from_: Annotated[
            str | None,
            QueryParameter(name="from", description="ms after the session's start (integer, at least 0)"),
        ] = None,
        to: Annotated[
            int | None, QueryParameter(ge=0, le=MAX_OFFSET_MS, description="ms after the session's start")
        ] = None,
    ) -> Stream:
        service: ReplayService = state.replay_service
        output = _recording_format(request)
        opened = await service.open_recording(
            project.project_id, _session_id(session_id), _offset_ms("from", from_), to
        )
        plan = opened.plan
        headers = {
            "X-Replay-Start-Offset-Ms": str(plan.start_offset_ms),
            "X-Replay-Chunk-Count": str(plan.chunk_count),
            "Vary": "Accept",
            "Cache-Control": "private, no-store",
        }
        if plan.batches:
            headers["X-Replay-First-Seq"] = str(plan.batches[0].first_seq)
            headers["X-Replay-Last-Seq"] = str(plan.batches[-1].last_seq)
        return Stream(
            service.stream_recording(project.project_id, session_id, opened, output),
            media_type=output.value,
            headers=headers,
        )

    @delete(
        # A path parameter, so that a distinctId holding "/" (sent as %2F, which the server has
        # decoded before routing) can be erased too; the exact id is read back from the raw path.
        "/persons/{distinct_id:path}",
        status_code=200,
        dependencies={"connection": Provide(provide_write_transaction)},
        summary="Delete a person's events and recordings in this project (GDPR erasure)",
        description=(
            "Deletes every event with this distinctId, their ingest idempotency keys, and every recorded"
            " session begun under it or holding a chunk sent under it (never a session merely named by one"
            " of its events). The query rollups of every day the person had events on are deleted before"
            " the answer; until the rollup refresher rebuilds them, queries read those days from raw"
            " events. One transaction under the server's statement timeout: an erasure that fails or times"
            " out deleted nothing and can be retried. Answers the rows deleted per table; deleting again"
            " answers zeros. See docs/privacy.md."
        ),
        responses=error_responses({**AUTH_ERRORS, 422: "The distinctId is malformed"}),
    )
    async def delete_person(
        self,
        request: Request[Any, Any, Any],
        project: NamedDependency[ProjectRecord],
        connection: NamedDependency[AsyncConnection],
        state: State,
        distinct_id: FromPath[str],
    ) -> PersonDeletion:
        distinct_id = _exact_path_tail(request, PERSONS_PREFIX, distinct_id)
        if not 1 <= len(distinct_id) <= 200 or "\x00" in distinct_id:
            raise ApiError(
                422, "invalid_distinct_id", "A distinctId is 1 to 200 characters without NUL.", field="distinctId"
            )
        service: ReplayService = state.replay_service
        return await service.delete_person(connection, project.project_id, distinct_id)
