"""Ingest limits and behaviour, read from SIGHTLINE_INGEST_* (or SIGHTLINE_*) variables."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.settings import Env, SettingsError

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int  # as received (compressed)
    max_decompressed_bytes: int  # after gunzip: what a gzip bomb runs into


@dataclass(frozen=True)
class IngestSettings:
    events: BodyLimits = BodyLimits(max_body_bytes=512 * KIB, max_decompressed_bytes=2 * MIB)
    # A first replay chunk holds a full DOM snapshot: 15-60 kB gzip is usual, several MB
    # uncompressed is possible on heavy pages.
    replay: BodyLimits = BodyLimits(max_body_bytes=4 * MIB, max_decompressed_bytes=32 * MIB)
    max_events_per_batch: int = 500
    max_rrweb_events_per_chunk: int = 50_000
    # Older events are refused (422): they would land outside the daily partitions that exist.
    max_event_age_days: int = 7
    # The batch writer: commit whatever has arrived every few milliseconds.
    writer_linger_ms: float = 2.0
    # Past a few hundred rows a statement gets slower per row (measured: 40 us/row at 256
    # rows, 88 us/row at 1,000), so big backlogs go in several transactions.
    writer_max_batch_rows: int = 500
    # Tracker requests one process works on at once; more wait before their body is read
    # (services/ingest/admission.py). 0: no cap. 64 keeps the writer's batches full (a batch
    # takes up to 500 rows, ~60 requests) while an overloaded process's loop turns stay short.
    max_concurrent_requests: int = 64
    # The most a tracker request waits for one of those slots (its body already read), then 503.
    admission_wait_s: float = 5.0
    # A body is read before it may take a slot: any upload may take body_grace_s, after which it
    # must have averaged min_upload_bytes_per_s, else 408 and the connection is closed
    # (services/ingest/admission.py). Stalled and trickling uploads then hold only their socket.
    body_grace_s: float = 10.0
    min_upload_bytes_per_s: float = 4096.0
    # POST /v1/noop (the load test's baseline) exists only when a benchmark turns it on.
    benchmark_noop: bool = False
    # Stored replay bytes per batch (one batch is one message to Postgres, hex-encoded).
    writer_max_batch_chunk_bytes: int = 8 * MIB
    writer_max_queue_rows: int = 50_000
    # Also bounded in bytes (replay chunks as stored, events roughly): past either, 503.
    writer_max_queue_bytes: int = 128 * MIB
    writer_concurrency: int = 2
    # A request waits at most this long for its rows to commit, then answers 503; a retry
    # with the same uuids is stored once.
    writer_commit_timeout_s: float = 10.0
    # Only these peers may set X-Forwarded-For (CIDRs); by default the peer is the client.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # A MaxMind GeoLite2/GeoIP2 Country or City .mmdb file; empty: the database that the
    # geoip2fast package ships (GeoLite2 Country, IPv4 only).
    geoip_database: str = ""
    project_cache_ttl_s: float = 30.0
    # Per project, per worker process (0 turns the limit off). The default lets one project
    # send the seed load (about 1,000 requests/s) through two workers with room to spare.
    rate_limit_requests_per_s: float = 1_000.0
    rate_limit_burst: float = 2_000.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IngestSettings:
        env = Env("ingest", os.environ if environ is None else environ)
        try:
            proxies = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in env.items("TRUSTED_PROXIES", ()))
        except ValueError as exc:
            raise SettingsError(f"SIGHTLINE_TRUSTED_PROXIES: {exc}") from exc
        return cls(
            events=BodyLimits(
                max_body_bytes=env.integer("EVENTS_MAX_BODY_BYTES", cls.events.max_body_bytes),
                max_decompressed_bytes=env.integer("EVENTS_MAX_DECOMPRESSED_BYTES", cls.events.max_decompressed_bytes),
            ),
            replay=BodyLimits(
                max_body_bytes=env.integer("REPLAY_MAX_BODY_BYTES", cls.replay.max_body_bytes),
                max_decompressed_bytes=env.integer("REPLAY_MAX_DECOMPRESSED_BYTES", cls.replay.max_decompressed_bytes),
            ),
            max_events_per_batch=env.integer("MAX_EVENTS_PER_BATCH", cls.max_events_per_batch),
            max_rrweb_events_per_chunk=env.integer("MAX_RRWEB_EVENTS_PER_CHUNK", cls.max_rrweb_events_per_chunk),
            max_event_age_days=env.integer("MAX_EVENT_AGE_DAYS", cls.max_event_age_days),
            writer_linger_ms=env.number("WRITER_LINGER_MS", cls.writer_linger_ms),
            writer_max_batch_rows=env.integer("WRITER_MAX_BATCH_ROWS", cls.writer_max_batch_rows),
            max_concurrent_requests=env.integer("MAX_CONCURRENT_REQUESTS", cls.max_concurrent_requests),
            admission_wait_s=env.number("ADMISSION_WAIT_S", cls.admission_wait_s),
            body_grace_s=env.number("BODY_GRACE_S", cls.body_grace_s),
            min_upload_bytes_per_s=env.number("MIN_UPLOAD_BYTES_PER_S", cls.min_upload_bytes_per_s),
            benchmark_noop=env.integer("BENCHMARK_NOOP", 0) == 1,
            writer_max_batch_chunk_bytes=env.integer("WRITER_MAX_BATCH_CHUNK_BYTES", cls.writer_max_batch_chunk_bytes),
            writer_max_queue_rows=env.integer("WRITER_MAX_QUEUE_ROWS", cls.writer_max_queue_rows),
            writer_max_queue_bytes=env.integer("WRITER_MAX_QUEUE_BYTES", cls.writer_max_queue_bytes),
            writer_concurrency=env.integer("WRITER_CONCURRENCY", cls.writer_concurrency),
            writer_commit_timeout_s=env.number("WRITER_COMMIT_TIMEOUT_S", cls.writer_commit_timeout_s),
            trusted_proxies=proxies,
            geoip_database=env.text("GEOIP_DATABASE", ""),
            project_cache_ttl_s=env.number("PROJECT_CACHE_TTL_S", cls.project_cache_ttl_s),
            rate_limit_requests_per_s=env.number("RATE_LIMIT_REQUESTS_PER_S", cls.rate_limit_requests_per_s),
            rate_limit_burst=env.number("RATE_LIMIT_BURST", cls.rate_limit_burst),
        )
