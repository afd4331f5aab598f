"""Ingest decisions: which project, which rows, enriched how. No SQL here."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter

from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.auth import ProjectCache, project_for_public_key
from services.common.errors import ApiError
from services.common.keys import PUBLIC_KEY_PREFIX
from services.common.project_repository import ProjectRecord
from services.common.rate_limit import CostBuckets, TokenBuckets
from services.common.telemetry import step_span
from services.ingest import enrichment
from services.ingest.enrichment import CountryLookup, UrlError
from services.ingest.repository import ChunkRow, EventRow
from services.ingest.schemas import EventBatch, ReplayChunkBody, RrwebEvent
from services.ingest.settings import IngestSettings
from services.ingest.writer import BatchWriter

# rrweb: EventType.FullSnapshot, EventType.IncrementalSnapshot, EventType.Meta
FULL_SNAPSHOT, INCREMENTAL_SNAPSHOT, META = 2, 3, 4
# rrweb IncrementalSource values that mean a person is doing something: mouse move,
# mouse interaction, scroll, input, touch move, media interaction, drag, selection.
ACTIVE_SOURCES = frozenset({1, 2, 3, 5, 6, 7, 12, 14})
MOUSE_INTERACTION, CLICK = 2, 2
# Gaps between interactions longer than this are idle time, not active time.
ACTIVITY_GAP_MS = 5_000
MAX_REPLAY_CLOCK_AHEAD = timedelta(days=1)
# Chunks with more rrweb events than this are summarised on a worker thread; the tracker's hold
# tens to a few hundred (5 s of recording).
THREADED_SUMMARY_EVENTS = 2_000
# Public keys are "pk_" and 22 characters; this leaves room for other key formats.
MAX_PUBLIC_KEY_LENGTH = 64


@dataclass(frozen=True)
class RequestContext:
    """What the HTTP request says about the sender, besides its body."""

    received_at: datetime
    user_agent: str
    client_ip: str | None
    origin_host: str | None


class IngestService:
    def __init__(
        self,
        engine: AsyncEngine,
        writer: BatchWriter,
        settings: IngestSettings,
        project_cache: ProjectCache,
        country_lookup: CountryLookup,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self._settings = settings
        self._project_cache = project_cache
        self._country_lookup = country_lookup
        self._rate_limit = TokenBuckets(settings.rate_limit_requests_per_s, settings.rate_limit_burst)
        self._event_budget = CostBuckets(settings.event_budget_per_s, settings.event_budget_burst)
        self._address_event_budget = CostBuckets(
            settings.address_event_budget_per_s, settings.address_event_budget_burst, settings.address_table_size
        )

    async def ingest_events(
        self, batch: EventBatch, context: RequestContext, admitted: ProjectRecord | None = None
    ) -> int:
        """admitted: the project admit() already found for this request (its rate limit taken)."""
        project = admitted or await self.admit(batch.project_key)
        with step_span("ingest.enrich") as span:
            rows = self._event_rows(batch, project, context)
            span.set_attribute("sightline.events", len(rows))
        await self._writer.submit(rows, [])
        return len(rows)

    async def ingest_replay_chunk(
        self,
        chunk: ReplayChunkBody,
        stored_body: bytes,
        content_encoding: str,
        context: RequestContext,
        admitted: ProjectRecord | None = None,
    ) -> int:
        project = admitted or await self.admit(chunk.project_key)
        _refuse_too_many(self._settings.max_rrweb_events_per_chunk, len(chunk.events), "A chunk", "rrweb events")
        with step_span("ingest.summarise"):
            if len(chunk.events) > THREADED_SUMMARY_EVENTS:
                # A long chunk's summary is a Python loop over every event (11 ms for 50,000): on a
                # thread, the interpreter hands the event loop a turn every few milliseconds meanwhile.
                summary = await asyncio.to_thread(summarise_rrweb, chunk.events)
            else:
                summary = summarise_rrweb(chunk.events)
        with step_span("ingest.enrich"):
            row = self._chunk_row(chunk, summary, stored_body, content_encoding, project, context)
        # rrweb timestamps come from the client's clock with nothing to correct it by;
        # refuse what no plausible clock would say.
        if not (
            context.received_at - timedelta(days=self._settings.max_event_age_days)
            <= row.first_timestamp
            <= row.last_timestamp
            <= context.received_at + MAX_REPLAY_CLOCK_AHEAD
        ):
            raise ApiError(
                422, "timestamp_out_of_range", "rrweb timestamps are too far from the server's clock.", field="events"
            )
        await self._writer.submit([], [row])
        return row.event_count

    async def admit(self, public_key: str) -> ProjectRecord:
        """The key's project, its rate limit taken; 401 for an unknown key, 429 over the limit."""
        if not public_key.startswith(PUBLIC_KEY_PREFIX) or len(public_key) > MAX_PUBLIC_KEY_LENGTH:
            # Not a key at all: no lookup, no cache entry.
            raise ApiError(401, "unknown_project_key", "No project has that projectKey.", field="projectKey")
        project = await project_for_public_key(self._engine, self._project_cache, public_key)
        if project is None:
            raise ApiError(401, "unknown_project_key", "No project has that projectKey.", field="projectKey")
        # Before any enrichment or writing: a flooding project costs the others little.
        self._rate_limit.take(project.project_id)
        wait_s = self._event_budget.wait_s(project.project_id)
        if wait_s is not None:
            # With ?key= this is before the body is inflated: a project that spent its budget
            # costs only the check until the refill has repaid it.
            raise OverBudget(wait_s)
        return project

    def charge_events(self, project: ProjectRecord, events: int, address: str | None = None) -> None:
        """The events a body holds, counted by the skim before they are decoded, spent from the
        project's budget and the client address's."""
        self._event_budget.charge(project.project_id, events)
        if address is not None:
            self._address_event_budget.charge(address, events)

    def check_address_budget(self, address: str | None) -> None:
        """429 `address_over_budget` while the address's event budget is spent (before its body is inflated)."""
        wait_s = self._address_event_budget.wait_s(address) if address is not None else None
        if wait_s is not None:
            raise AddressOverBudget(wait_s)

    def _event_rows(self, batch: EventBatch, project: ProjectRecord, context: RequestContext) -> list[EventRow]:
        _refuse_too_many(self._settings.max_events_per_batch, len(batch.events), "A batch", "events")
        now = context.received_at
        # The client's clock is off by (its sentAt - our receive time); shift every event back.
        skew = now - batch.sent_at if batch.sent_at is not None else timedelta(0)
        oldest_allowed = now - timedelta(days=self._settings.max_event_age_days)
        client = enrichment.describe_client(context.user_agent)
        country = self._country_lookup(context.client_ip) if context.client_ip else None

        rows: list[EventRow] = []
        for index, event in enumerate(batch.events):
            try:
                location = enrichment.parse_page_url(event.url)
            except UrlError as exc:
                raise ApiError(422, "invalid_url", f"url {exc}.", field=f"events[{index}].url") from exc
            if not enrichment.host_is_allowed(location.domain, project.allowed_domains):
                raise ApiError(
                    403,
                    "domain_not_allowed",
                    f"{location.domain!r} is not among this project's allowed domains.",
                    field=f"events[{index}].url",
                )
            try:
                occurred_at = event.timestamp + skew
            except OverflowError as exc:
                # A sentAt near year 1 or 9999 moves the event outside what a datetime holds.
                raise ApiError(
                    422,
                    "timestamp_out_of_range",
                    "sentAt is so far from the server's clock that the corrected timestamp is not a date.",
                    field="sentAt",
                ) from exc
            if occurred_at > now:
                occurred_at = now  # no event happens after we received it
            if occurred_at < oldest_allowed:
                raise ApiError(
                    422,
                    "timestamp_too_old",
                    f"timestamp is more than {self._settings.max_event_age_days} days in the past.",
                    field=f"events[{index}].timestamp",
                )
            rows.append(
                EventRow(
                    project_id=project.project_id,
                    occurred_at=occurred_at.astimezone(UTC),
                    event_uuid=event.uuid,
                    name=event.event,
                    distinct_id=event.distinct_id,
                    session_id=event.session_id,
                    url=event.url,
                    domain=location.domain,
                    path=location.path,
                    title=event.title,
                    referrer=event.referrer or None,
                    referrer_domain=enrichment.referrer_domain(event.referrer, location.domain),
                    utm_source=location.utm.get("utm_source"),
                    utm_medium=location.utm.get("utm_medium"),
                    utm_campaign=location.utm.get("utm_campaign"),
                    utm_term=location.utm.get("utm_term"),
                    utm_content=location.utm.get("utm_content"),
                    browser=client.browser,
                    browser_version=client.browser_version,
                    os=client.os,
                    os_version=client.os_version,
                    device_type=client.device_type,
                    country=country,
                    is_bot=client.is_bot,
                    properties=event.properties,
                )
            )
        return rows

    def _chunk_row(
        self,
        chunk: ReplayChunkBody,
        summary: RrwebSummary,
        stored_body: bytes,
        content_encoding: str,
        project: ProjectRecord,
        context: RequestContext,
    ) -> ChunkRow:
        page_host = context.origin_host
        if page_host is None and summary.first_url is not None:
            try:
                page_host = enrichment.parse_page_url(summary.first_url).domain
            except UrlError:
                page_host = None
        if page_host is not None and not enrichment.host_is_allowed(page_host, project.allowed_domains):
            raise ApiError(403, "domain_not_allowed", f"{page_host!r} is not among this project's allowed domains.")
        client = enrichment.describe_client(context.user_agent)
        return ChunkRow(
            project_id=project.project_id,
            session_id=chunk.session_id,
            seq=chunk.seq,
            first_timestamp=_from_epoch_ms(summary.first_ms),
            last_timestamp=_from_epoch_ms(summary.last_ms),
            event_count=len(chunk.events),
            has_full_snapshot=summary.has_full_snapshot,
            content_encoding=content_encoding,
            data=stored_body,
            distinct_id=chunk.distinct_id,
            click_count=summary.clicks,
            page_count=summary.pages,
            active_ms=summary.active_ms,
            first_url=summary.first_url,
            country=self._country_lookup(context.client_ip) if context.client_ip else None,
            browser=client.browser,
            os=client.os,
            device_type=client.device_type,
        )


class OverBudget(ApiError):
    def __init__(self, wait_s: float) -> None:
        seconds = max(1, math.ceil(wait_s))
        super().__init__(
            429,
            "over_budget",
            f"This project has sent more events than its budget allows; retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )


class AddressOverBudget(ApiError):
    def __init__(self, wait_s: float) -> None:
        seconds = max(1, math.ceil(wait_s))
        super().__init__(
            429,
            "address_over_budget",
            f"Requests from this address have sent more events than its budget allows; retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )


@dataclass(frozen=True)
class RrwebSummary:
    first_ms: int
    last_ms: int
    has_full_snapshot: bool
    clicks: int
    pages: int
    active_ms: int
    first_url: str | None


_TIMESTAMP = attrgetter("timestamp")


def summarise_rrweb(events: list[RrwebEvent]) -> RrwebSummary:
    """What a session list needs to know about a chunk, computed once at ingest."""
    ordered = sorted(events, key=_TIMESTAMP)
    clicks = 0
    page_urls: list[str] = []
    interaction_times: list[int] = []
    has_full_snapshot = False
    for event in ordered:
        if event.type == FULL_SNAPSHOT:
            has_full_snapshot = True
        elif event.type == META and event.data.href:
            page_urls.append(event.data.href)
        elif event.type == INCREMENTAL_SNAPSHOT and event.data.source in ACTIVE_SOURCES:
            interaction_times.append(event.timestamp)
            if event.data.source == MOUSE_INTERACTION and event.data.type == CLICK:
                clicks += 1
    active_ms = sum(
        gap
        for gap in (later - earlier for earlier, later in zip(interaction_times, interaction_times[1:], strict=False))
        if gap <= ACTIVITY_GAP_MS
    )
    first_url = page_urls[0][:2048] if page_urls else None
    if first_url is not None and "\x00" in first_url:
        raise ApiError(422, "nul_character", "A page URL must not contain NUL.", field="events")
    return RrwebSummary(
        first_ms=ordered[0].timestamp,
        last_ms=ordered[-1].timestamp,
        has_full_snapshot=has_full_snapshot,
        clicks=clicks,
        pages=len(page_urls),
        active_ms=active_ms,
        first_url=first_url,
    )


def _from_epoch_ms(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def _refuse_too_many(limit: int, count: int, holder: str, events: str) -> None:
    if count > limit:
        raise ApiError(422, "too_many_events", f"{holder} may hold at most {limit} {events}.", field="events")
