"""Ingest limits and behaviour, read from SIGHTLINE_INGEST_* (or SIGHTLINE_*) variables."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.settings import SettingsError, load_settings, setting

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int  # as received (compressed)
    max_decompressed_bytes: int  # after gunzip: what a gzip bomb runs into


@dataclass(frozen=True)
class IngestSettings:
    # Bodies as received (compressed), and after gunzip (what a gzip bomb runs into).
    events_max_body_bytes: int = setting("EVENTS_MAX_BODY_BYTES", 512 * KIB)
    events_max_decompressed_bytes: int = setting("EVENTS_MAX_DECOMPRESSED_BYTES", 2 * MIB)
    # A first replay chunk holds a full DOM snapshot: 15-60 kB gzip is usual, several MB
    # uncompressed is possible on heavy pages.
    replay_max_body_bytes: int = setting("REPLAY_MAX_BODY_BYTES", 4 * MIB)
    replay_max_decompressed_bytes: int = setting("REPLAY_MAX_DECOMPRESSED_BYTES", 32 * MIB)
    max_events_per_batch: int = setting("MAX_EVENTS_PER_BATCH", 500)
    # The tracker sends a chunk every 5 s: the committed Chromium recordings' chunks hold 6-40
    # rrweb events, the seed's up to 64. 5,000 leaves over 100 times the largest. The events a
    # chunk holds are decoded in one go; at 50,000 (25 ms of CPU each) a valid key's chunks
    # made honest requests wait behind them (`make attack`, counter-overflow chunks).
    max_rrweb_events_per_chunk: int = setting("MAX_RRWEB_EVENTS_PER_CHUNK", 5_000)
    # Older events are refused (422): they would land outside the daily partitions that exist.
    max_event_age_days: int = setting("MAX_EVENT_AGE_DAYS", 7)
    # The batch writer: commit whatever has arrived every few milliseconds.
    writer_linger_ms: float = setting("WRITER_LINGER_MS", 2.0)
    # Past a few hundred rows a statement gets slower per row (measured: 40 us/row at 256
    # rows, 88 us/row at 1,000), so big backlogs go in several transactions.
    writer_max_batch_rows: int = setting("WRITER_MAX_BATCH_ROWS", 500)
    # Tracker requests one process works on at once; more wait before their body is read
    # (services/ingest/admission.py). 0: no cap. 64 keeps the writer's batches full (a batch
    # takes up to 500 rows, ~60 requests) while an overloaded process's loop turns stay short.
    max_concurrent_requests: int = setting("MAX_CONCURRENT_REQUESTS", 64)
    # The most a tracker request waits for one of those slots (its body already read), then 503.
    admission_wait_s: float = setting("ADMISSION_WAIT_S", 5.0)
    # A body is read before it may take a slot: any upload may take body_grace_s, after which it
    # must have averaged min_upload_bytes_per_s, else 408 and the connection is closed
    # (services/ingest/admission.py). Stalled and trickling uploads then hold only their socket.
    body_grace_s: float = setting("BODY_GRACE_S", 10.0)
    min_upload_bytes_per_s: float = setting("MIN_UPLOAD_BYTES_PER_S", 4096.0)
    # POST /v1/noop (the load test's baseline) exists only when a benchmark turns it on.
    benchmark_noop: bool = setting("BENCHMARK_NOOP", False)
    # Stored replay bytes per batch (one batch is one message to Postgres, hex-encoded).
    writer_max_batch_chunk_bytes: int = setting("WRITER_MAX_BATCH_CHUNK_BYTES", 8 * MIB)
    writer_max_queue_rows: int = setting("WRITER_MAX_QUEUE_ROWS", 50_000)
    # Also bounded in bytes (replay chunks as stored, events roughly): past either, 503.
    writer_max_queue_bytes: int = setting("WRITER_MAX_QUEUE_BYTES", 128 * MIB)
    writer_concurrency: int = setting("WRITER_CONCURRENCY", 2)
    # Events and replay chunks committed in separate transactions (each with writer_concurrency
    # in flight), so an events request does not wait for replay bytes. Off by default: it adds
    # commits, each waiting for a WAL flush, and the 2000-visitor runs on the shared machine could
    # not show a gain (docs/benchmarks.md, "The commit's WAL flush").
    writer_split_lanes: bool = setting("WRITER_SPLIT_LANES", False)
    # A request waits at most this long for its rows to commit, then answers 503; a retry
    # with the same uuids is stored once.
    writer_commit_timeout_s: float = setting("WRITER_COMMIT_TIMEOUT_S", 10.0)
    # Only these peers may set X-Forwarded-For (CIDRs); by default the peer is the client.
    trusted_proxy_cidrs: tuple[str, ...] = setting("TRUSTED_PROXIES", ())
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, default=())
    # A MaxMind GeoLite2/GeoIP2 Country or City .mmdb file; empty: the database that the
    # geoip2fast package ships (GeoLite2 Country, IPv4 only).
    geoip_database: str = setting("GEOIP_DATABASE", "")
    project_cache_ttl_s: float = setting("PROJECT_CACHE_TTL_S", 30.0)
    # Per project, per worker process (0 turns the limit off). The default lets one project
    # send the seed load (about 1,000 requests/s) through two workers with room to spare.
    rate_limit_requests_per_s: float = setting("RATE_LIMIT_REQUESTS_PER_S", 1_000.0)
    rate_limit_burst: float = setting("RATE_LIMIT_BURST", 2_000.0)
    # A work budget per project, per worker process: events (tracker events and rrweb events)
    # decoded per second, charged by the count the skim finds, before the typed decode. The rate
    # limit counts requests, not their cost: a 50,000-event replay chunk is one request. The seed
    # (5,000 visitors of one project, a request every 5 s each: event batches of 8 and replay
    # chunks of up to 64 rrweb events, alternately) decodes at most 36,000 events/s in all: one
    # worker taking all of it may see 2.5 times that, two workers 5 times. 0 turns it off.
    event_budget_per_s: float = setting("EVENT_BUDGET_PER_S", 100_000.0)
    event_budget_burst: float = setting("EVENT_BUDGET_BURST", 200_000.0)
    # The same budget per client address (the address as ADDRESS_REFUSALS_* counts it), per
    # worker process: a valid key may spend its project's budget, but from one address only
    # this much. A visitor sends a few dozen events every 5 s (the seed: about 7 a second), so
    # an office behind one NAT address of a thousand visitors uses a fifth of it; the seed
    # load test (5,000 visitors, all from 127.0.0.1, 36,000 events/s) fits on one worker. 0 turns it off.
    address_event_budget_per_s: float = setting("ADDRESS_EVENT_BUDGET_PER_S", 40_000.0)
    address_event_budget_burst: float = setting("ADDRESS_EVENT_BUDGET_BURST", 200_000.0)
    # Per client address (IPv6: per /64), per worker process: tracker requests answered 4xx (an
    # unknown key, a bad body, a project over its limit or budget), and requests whose
    # User-Agent is longer than any browser's (over 512 characters; they are still answered).
    # Past the budget, the address
    # is refused 429 at the door, before its body is read or its key looked up, until the
    # refill repays it. An honest tracker is refused rarely; a flood of made-up keys is refused
    # every time. The address is the socket peer, or X-Forwarded-For from TRUSTED_PROXIES: behind
    # a proxy that is not listed there every client shares the proxy's address. 0 turns it off.
    address_refusals_per_s: float = setting("ADDRESS_REFUSALS_PER_S", 5.0)
    address_refusals_burst: float = setting("ADDRESS_REFUSALS_BURST", 20.0)
    # Addresses remembered at once (least recently refused first out): bounded memory.
    address_table_size: int = setting("ADDRESS_TABLE_SIZE", 50_000)
    # A refused address's requests wait this long (or until its budget holds a refusal again, if
    # sooner) before the 429, at most 256 at once per process: an attacker that sends again as
    # soon as it is refused then sends at most its connections per second.
    address_refusal_hold_s: float = setting("ADDRESS_REFUSAL_HOLD_S", 1.0)

    def __post_init__(self) -> None:
        try:
            proxies = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.trusted_proxy_cidrs)
        except ValueError as exc:
            raise SettingsError(f"SIGHTLINE_TRUSTED_PROXIES: {exc}") from exc
        object.__setattr__(self, "trusted_proxies", proxies)

    @property
    def events(self) -> BodyLimits:
        return BodyLimits(self.events_max_body_bytes, self.events_max_decompressed_bytes)

    @property
    def replay(self) -> BodyLimits:
        return BodyLimits(self.replay_max_body_bytes, self.replay_max_decompressed_bytes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IngestSettings:
        return load_settings(cls, "ingest", environ)
