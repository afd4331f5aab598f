"""The ingest service's app factory (Granian: `granian --factory services.ingest.app:create_app`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.types import ControllerRouterHandler

from services.common.app import build_app
from services.common.auth import ProjectCache
from services.common.settings import AdminDatabaseSettings, DatabaseSettings, LogSettings
from services.ingest.admission import AddressRefusals, AdmissionLimits, TrackerAdmissionMiddleware
from services.ingest.cors import AllowedOrigins, TrackerCorsMiddleware
from services.ingest.enrichment import open_country_lookup, warm_up
from services.ingest.routes import post_events, post_noop, post_replay
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
from services.ingest.tasks import partition_upkeep
from services.ingest.tracker_route import get_tracker_script
from services.ingest.writer import BatchWriter, WriterLimits

DESCRIPTION = (
    "Receives events and session-replay chunks from browser trackers; answers 202 only once rows are committed."
)


def create_app(
    database: DatabaseSettings | None = None,
    logs: LogSettings | None = None,
    settings: IngestSettings | None = None,
    admin_database: AdminDatabaseSettings | None = None,
) -> Litestar:
    """admin_database: the owner's direct connection, used only to create event partitions
    ahead (tasks.py); when None, SIGHTLINE_ADMIN_DATABASE_URL if it is set, else no upkeep."""
    settings = settings or IngestSettings.from_env()
    admin_database = admin_database or AdminDatabaseSettings.from_env_if_set()

    @asynccontextmanager
    async def ingest_pipeline(app: Litestar) -> AsyncIterator[None]:
        engine = app.state.engine
        writer = BatchWriter(
            engine,
            WriterLimits(
                linger_s=settings.writer_linger_ms / 1000,
                max_batch_rows=settings.writer_max_batch_rows,
                max_batch_chunk_bytes=settings.writer_max_batch_chunk_bytes,
                max_queue_rows=settings.writer_max_queue_rows,
                concurrency=settings.writer_concurrency,
                commit_timeout_s=settings.writer_commit_timeout_s,
                max_queue_bytes=settings.writer_max_queue_bytes,
                split_lanes=settings.writer_split_lanes,
            ),
        )
        project_cache = ProjectCache(ttl_s=settings.project_cache_ttl_s)
        country_lookup = open_country_lookup(settings.geoip_database)
        warm_up(country_lookup)
        app.state.ingest_settings = settings
        app.state.allowed_origins = AllowedOrigins(engine, settings.project_cache_ttl_s)
        app.state.ingest_service = IngestService(engine, writer, settings, project_cache, country_lookup)
        await writer.start()
        try:
            yield
        finally:
            # Granian has stopped accepting and let in-flight requests finish; what they
            # queued is committed before the process exits.
            await writer.close()

    max_body_bytes = {"/v1/events": settings.events.max_body_bytes, "/v1/replay": settings.replay.max_body_bytes}
    route_handlers: list[ControllerRouterHandler] = [
        Router("/", route_handlers=[post_events], request_max_body_size=settings.events.max_body_bytes),
        Router("/", route_handlers=[post_replay], request_max_body_size=settings.replay.max_body_bytes),
        get_tracker_script,
    ]
    if settings.benchmark_noop:
        # A public no-op would let anyone spend admission slots for free; only benchmarks need it.
        max_body_bytes["/v1/noop"] = settings.replay.max_body_bytes
        route_handlers.append(
            Router("/", route_handlers=[post_noop], request_max_body_size=settings.replay.max_body_bytes)
        )
    admission = TrackerAdmissionMiddleware(
        AdmissionLimits(
            max_concurrent=settings.max_concurrent_requests,
            admission_wait_s=settings.admission_wait_s,
            body_grace_s=settings.body_grace_s,
            min_upload_bytes_per_s=settings.min_upload_bytes_per_s,
        ),
        max_body_bytes,
        AddressRefusals(
            settings.address_refusals_per_s,
            settings.address_refusals_burst,
            settings.address_table_size,
            settings.trusted_proxies,
            hold_s=settings.address_refusal_hold_s,
        ),
    )
    return build_app(
        service="ingest",
        title="Sightline ingest",
        description=DESCRIPTION,
        route_handlers=route_handlers,
        database=database or DatabaseSettings.from_env("ingest"),
        logs=logs or LogSettings.from_env("ingest"),
        lifespans=[ingest_pipeline, partition_upkeep(admin_database)],
        middleware=[TrackerCorsMiddleware(), admission],
    )
