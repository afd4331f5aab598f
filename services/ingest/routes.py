"""HTTP for the tracker contract: parse, call the service, answer 202 once stored."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED
from opentelemetry import trace

from services.common.errors import ApiError, error_responses
from services.common.project_repository import ProjectRecord
from services.common.telemetry import past_span, request_mark, step_span
from services.ingest.admission import client_address
from services.ingest.decoding import (
    check_content_headers,
    check_event_count,
    decode_json,
    gunzip_bounded,
    skim,
)
from services.ingest.enrichment import client_ip, origin_host
from services.ingest.schemas import Accepted, EventBatch, ReplayChunkBody
from services.ingest.service import IngestService, RequestContext
from services.ingest.settings import IngestSettings

_ERRORS = error_responses(
    {
        400: "Malformed JSON or gzip",
        401: "Missing or unknown projectKey (or ?key=), or a ?key= that differs from projectKey",
        408: "The body arrived too slowly (see docs/ingest.md, The door); the connection is closed",
        403: "The page's host is not among the project's allowed domains",
        413: "Body over the limit, compressed or decompressed",
        415: "Content-Type other than application/json or text/plain, or Content-Encoding other than gzip",
        422: "The body does not match the contract; `field` names the first offending field",
        429: (
            "The project is over its rate limit or its event budget, or this client address was refused"
            " too often; retry after Retry-After seconds"
        ),
        503: (
            "Writer queue full, database unreachable, no admission slot in time, or too many key lookups waiting;"
            " retry after Retry-After seconds"
        ),
    }
)


# Bodies larger than this (as sent) are inflated on a worker thread.
THREADED_GUNZIP_BYTES = 32 * 1024


class TrackerRequest(Request[Any, Any, Any]):
    """A request whose JSON body may be gzip, decoded straight into the handler's msgspec type.

    Litestar asks ``json()`` for the ``data`` argument; answering with the typed struct
    decodes once (not to dicts first) and turns every problem into the contract's errors.
    The raw body stays available through ``body()``, which replay stores as sent.

    Cheap checks come before expensive work. A key in the URL (``?key=pk_...``, what the
    tracker sends) is checked, with the project's rate limit, before the body is decompressed;
    a body-only request's key is checked after a skim of the body, before its events are
    decoded; either way the events are counted before they are decoded. The project found is
    kept in ``scope["state"]`` for the handler (``admitted_project``).
    """

    async def json(self) -> Any:
        routed_ns = request_mark("routed")
        if routed_ns is not None:  # a traced request: from its slot taken to here, the framework's routing
            past_span("ingest.route", routed_ns, time.time_ns(), trace.get_current_span())
        body_type: type[Any] = self.route_handler.opt["tracker_body"]
        settings: IngestSettings = self.app.state.ingest_settings
        service: IngestService = self.app.state.ingest_service
        is_events = body_type is EventBatch
        limits = settings.events if is_events else settings.replay
        max_events = settings.max_events_per_batch if is_events else settings.max_rrweb_events_per_chunk
        is_gzip = check_content_headers(self.headers.get("content-type"), self.headers.get("content-encoding"))
        address = client_address(self.scope, settings.trusted_proxies)
        service.check_address_budget(address)
        url_key = self.query_params.get("key")
        project = None
        if url_key is not None:
            with step_span("ingest.admit"):
                project = await service.admit(url_key)
        body = await self.body()
        if is_gzip:
            with step_span("ingest.decompress") as span:
                span.set_attribute("sightline.compressed_bytes", len(body))
                if len(body) > THREADED_GUNZIP_BYTES:
                    # zlib lets go of the GIL while it inflates: the event loop serves others meanwhile.
                    body = await asyncio.to_thread(gunzip_bounded, body, limits.max_decompressed_bytes)
                else:
                    body = gunzip_bounded(body, limits.max_decompressed_bytes)
        elif len(body) > limits.max_decompressed_bytes:
            raise ApiError(413, "payload_too_large", f"The body is larger than {limits.max_decompressed_bytes} bytes.")
        with step_span("ingest.decode_json") as span:
            span.set_attribute("sightline.json_bytes", len(body))
            envelope = skim(body)
            if envelope is not None and isinstance(envelope.project_key, str):
                if project is None:
                    project = await service.admit(envelope.project_key)
                elif envelope.project_key != url_key:
                    raise _key_mismatch()
            check_event_count(envelope, max_events)
            if project is not None and envelope is not None:
                # Charged before the typed decode, the step whose cost grows with the count.
                service.charge_events(project, len(envelope.events), address)
            try:
                decoded = decode_json(body, body_type, envelope)
            except ApiError as exc:
                if exc.field == "projectKey":
                    raise ApiError(401, "missing_project_key", exc.message, field="projectKey") from exc
                raise
        if project is not None and decoded.project_key != project.public_key:
            raise _key_mismatch()
        self.scope["state"][ADMITTED_PROJECT] = project
        return decoded


ADMITTED_PROJECT = "admitted_project"


def _key_mismatch() -> ApiError:
    return ApiError(
        401, "project_key_mismatch", "projectKey in the body differs from the key in the URL.", field="projectKey"
    )


def _admitted(request: Request[Any, Any, Any]) -> ProjectRecord | None:
    project: ProjectRecord | None = request.scope["state"].get(ADMITTED_PROJECT)
    return project


# Declared on the handlers for the OpenAPI document; TrackerRequest.json reads it, before the body.
UrlKey = Annotated[
    str | None,
    QueryParameter(
        name="key",
        max_length=200,
        description="The project's public key, checked before the body is read; must equal projectKey",
    ),
]


def _context(request: Request[Any, Any, Any], settings: IngestSettings) -> RequestContext:
    origin = request.headers.get("origin")
    return RequestContext(
        received_at=datetime.now(UTC),
        user_agent=request.headers.get("user-agent", ""),
        client_ip=client_ip(
            request.client.host if request.client else None,
            request.headers.get("x-forwarded-for"),
            settings.trusted_proxies,
        ),
        origin_host=origin_host(origin) if origin else None,
    )


def tracker_post(path: str, *, summary: str, description: str, body: type[Any]) -> post:
    """A tracker route: a TrackerRequest decoding `body`, answering 202 once stored."""
    return post(
        path,
        summary=summary,
        description=description,
        status_code=HTTP_202_ACCEPTED,
        request_class=TrackerRequest,
        opt={"tracker_body": body},
        responses=_ERRORS,
        tags=["tracker"],
    )


@tracker_post(
    "/v1/events",
    summary="Store a batch of pageviews and custom events",
    description=(
        "JSON, optionally `Content-Encoding: gzip`. Answers 202 only after the events are committed. "
        "`?key=pk_...` (optional) names the project before the body is read; it must match `projectKey`. "
        "`sentAt` corrects the client's clock; timestamps after the receive time are set to it. "
        "Events with a `uuid` are stored once however often a batch is retried."
    ),
    body=EventBatch,
)
async def post_events(
    data: JSONBody[EventBatch], request: Request[Any, Any, Any], state: State, key: UrlKey = None
) -> Accepted:
    service: IngestService = state.ingest_service
    accepted = await service.ingest_events(data, _context(request, state.ingest_settings), _admitted(request))
    return Accepted(accepted=accepted)


@tracker_post(
    "/v1/replay",
    summary="Store one chunk of an rrweb session recording",
    description=(
        "Usually `Content-Encoding: gzip`. The body is stored exactly as sent (no recompression); "
        "`?key=pk_...` (optional) names the project before the body is read; it must match `projectKey`. "
        "a chunk is identified by (sessionId, seq), so a retried chunk is stored once. "
        "`accepted` counts the chunk's rrweb events."
    ),
    body=ReplayChunkBody,
)
async def post_replay(
    data: JSONBody[ReplayChunkBody], request: Request[Any, Any, Any], state: State, key: UrlKey = None
) -> Accepted:
    service: IngestService = state.ingest_service
    encoding = "gzip" if "gzip" in request.headers.get("content-encoding", "").lower() else "identity"
    accepted = await service.ingest_replay_chunk(
        data, await request.body(), encoding, _context(request, state.ingest_settings), _admitted(request)
    )
    return Accepted(accepted=accepted)


@post(
    "/v1/noop",
    summary="Read the body and answer 202 without storing anything",
    description="A baseline for load tests: the same HTTP path as /v1/events, minus decoding and storage.",
    status_code=HTTP_202_ACCEPTED,
    tags=["benchmark"],
)
async def post_noop(request: Request[Any, Any, Any]) -> Response[Accepted]:
    await request.body()
    return Response(Accepted(accepted=0), status_code=HTTP_202_ACCEPTED)
