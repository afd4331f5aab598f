"""Decisions of the replay service: pagination, seeking, how a recording is streamed. No SQL here."""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import logging
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import read_connection, set_statement_timeout
from services.common.errors import ApiError
from services.common.telemetry import step_span, tracer
from services.replay import repository
from services.replay.repository import ChunkBody, ChunkIndexRow, ReadBatch, SessionFilters, SessionRow
from services.replay.schemas import ChunkEntry, SessionDetail, SessionPage, SessionSummary

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

# Chunks are read from Postgres in batches of about this many stored bytes, each batch in
# its own short transaction: memory per stream stays bounded whatever the session's
# length, and a slow client never holds a pooled connection (nor, through PgBouncer, a
# server connection) while it downloads. The first batch is small so the first bytes
# leave as soon as the first chunk (the full snapshot) is read. Two batches at most are in
# memory per stream (see stream_recording).
FIRST_BATCH_BYTES = 64 * 1024
BATCH_BYTES = 256 * 1024

# Output is handed to the server in pieces of about this size: one write per 3 kB chunk
# would spend more time in the server than in the data, and Granian moved 64 KiB pieces
# faster than whole 256 KiB-1 MiB batches in make bench-replay.
WRITE_BYTES = 64 * 1024
# Decompression of one stored chunk proceeds in steps of at most this much output, so a
# chunk that inflates to many megabytes never sits in memory whole.
INFLATE_STEP_BYTES = 256 * 1024


class RecordingFormat(enum.Enum):
    # One stored chunk body per line, decompressed by the server: works with any client.
    NDJSON = "application/x-ndjson"
    # Stored bytes passed through as they are, each behind a one-line JSON frame header;
    # the client inflates each frame (in a browser: one DecompressionStream per frame).
    # Chosen over Content-Encoding: gzip on concatenated members because Chromium decodes
    # only the first member of such a body and silently drops the rest.
    CHUNK_FRAMES = "application/vnd.sightline.replay-chunks"


# --- session list -------------------------------------------------------------------------


def encode_cursor(row: SessionRow) -> str:
    raw = msgspec.json.encode([row.started_at.isoformat(), row.session_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_at, session_id = msgspec.json.decode(raw, type=tuple[datetime, str])
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise ApiError(422, "invalid_cursor", "The cursor is not one this API returned.", field="cursor") from exc
    try:
        if started_at.tzinfo is None:
            raise ValueError("naive")
        # No stored session id holds NUL (Postgres refuses it in text, so sending one is a 500).
        if "\x00" in session_id:
            raise ValueError("NUL")
        return started_at.astimezone(UTC), session_id
    except (ValueError, OverflowError) as exc:
        raise ApiError(422, "invalid_cursor", "The cursor is not one this API returned.", field="cursor") from exc


def _summary(row: SessionRow) -> SessionSummary:
    return SessionSummary(
        id=row.session_id,
        distinct_id=row.distinct_id,
        started_at=row.started_at,
        ended_at=row.ended_at,
        duration_ms=row.duration_ms,
        active_ms=row.active_ms,
        page_count=row.page_count,
        click_count=row.click_count,
        first_url=row.first_url,
        country=row.country,
        browser=row.browser,
        os=row.os,
        device_type=row.device_type,
        chunk_count=row.chunk_count,
        total_bytes=row.total_bytes,
    )


async def list_sessions(
    engine: AsyncEngine,
    project_id: int,
    filters: SessionFilters,
    *,
    cursor: str | None,
    limit: int,
    statement_timeout_ms: int,
) -> SessionPage:
    after = decode_cursor(cursor) if cursor else None
    async with engine.connect() as connection:
        await set_statement_timeout(connection, statement_timeout_ms)
        # One row more than asked tells whether another page exists without a count.
        rows = await repository.list_sessions(connection, project_id, filters, after=after, limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    return SessionPage(
        sessions=[_summary(row) for row in page],
        next_cursor=encode_cursor(page[-1]) if more and page else None,
    )


# --- one session ----------------------------------------------------------------------------


def _not_found(session_id: str) -> ApiError:
    return ApiError(404, "session_not_found", f"No recorded session {session_id!r} in this project.", field="id")


@dataclass(frozen=True)
class LoadedSession:
    session: SessionRow
    chunks: list[ChunkIndexRow]


async def load_session(engine: AsyncEngine, project_id: int, session_id: str) -> LoadedSession:
    """The session and its chunk index, read in one transaction so they agree."""
    async with engine.connect() as connection:
        session = await repository.find_session(connection, project_id, session_id)
        if session is None:
            raise _not_found(session_id)
        chunks = await repository.chunk_index(connection, project_id, session_id)
    return LoadedSession(session=session, chunks=chunks)


def session_detail(loaded: LoadedSession) -> SessionDetail:
    return SessionDetail(
        session=_summary(loaded.session),
        chunks=[
            ChunkEntry(
                seq=chunk.seq,
                first_timestamp=chunk.first_timestamp,
                last_timestamp=chunk.last_timestamp,
                event_count=chunk.event_count,
                full_snapshot=chunk.has_full_snapshot,
                content_encoding=chunk.content_encoding,
                byte_size=chunk.byte_size,
            )
            for chunk in loaded.chunks
        ],
    )


# --- recording ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingPlan:
    """Which chunks a recording request streams, as read batches (a few per megabyte)."""

    batches: list[ReadBatch]
    # Where the first streamed chunk begins, in ms from the session's start: a player that
    # asked for ``from`` skips (from - start_offset_ms) of replay after the snapshot.
    start_offset_ms: int

    @property
    def chunk_count(self) -> int:
        return sum(batch.chunk_count for batch in self.batches)


@dataclass(frozen=True)
class OpenedRecording:
    plan: RecordingPlan
    # The first batch, read in the same checkout as the plan: an unknown session is a 404
    # before any byte is sent, and the first bytes need no second checkout.
    first_batch: list[ChunkBody]


async def open_recording(
    engine: AsyncEngine, project_id: int, session_id: str, from_ms: int | None, to_ms: int | None
) -> OpenedRecording:
    """Plans the window [from, to] and reads its first batch.

    The window begins at the nearest chunk at or before ``from`` that holds a full
    snapshot, since incremental events mean nothing without one; if no snapshot precedes
    ``from``, at the first chunk with a snapshot; in a session without any, at the first
    chunk. It ends with the last chunk that begins at or before ``to``. The first read
    batch is small so the first bytes (the snapshot) leave early; later ones are larger.
    """
    if from_ms is not None and to_ms is not None and to_ms < from_ms:
        raise ApiError(422, "invalid_window", "'to' must not be before 'from'.", field="to")
    with step_span("replay.read_chunks") as span:
        opened = await _plan_and_read_first(engine, project_id, session_id, from_ms, to_ms)
        span.set_attribute("sightline.chunks", len(opened.first_batch))
    return opened


async def _plan_and_read_first(
    engine: AsyncEngine, project_id: int, session_id: str, from_ms: int | None, to_ms: int | None
) -> OpenedRecording:
    async with read_connection(engine) as connection:
        window = await repository.recording_window(
            connection,
            project_id,
            session_id,
            from_ms=from_ms or 0,
            to_ms=to_ms,
            first_batch_bytes=FIRST_BATCH_BYTES,
            batch_bytes=BATCH_BYTES,
        )
        if window is None:
            raise _not_found(session_id)
        first_batch = []
        if window.batches:
            first = window.batches[0]
            first_batch = await repository.chunk_bodies(
                connection, project_id, session_id, first.first_seq, first.last_seq
            )
    start_offset_ms = 0
    if window.window_start is not None:
        start_offset_ms = max(0, int((window.window_start - window.started_at) / timedelta(milliseconds=1)))
    return OpenedRecording(plan=RecordingPlan(window.batches, start_offset_ms), first_batch=first_batch)


async def _read_batch(engine: AsyncEngine, project_id: int, session_id: str, batch: ReadBatch) -> list[ChunkBody]:
    with step_span("replay.read_chunks") as span:
        span.set_attribute("sightline.first_seq", batch.first_seq)
        span.set_attribute("sightline.last_seq", batch.last_seq)
        async with read_connection(engine) as connection:
            return await repository.chunk_bodies(connection, project_id, session_id, batch.first_seq, batch.last_seq)


async def stream_recording(
    engine: AsyncEngine, project_id: int, session_id: str, opened: OpenedRecording, output: RecordingFormat
) -> AsyncIterator[bytes]:
    """Yields the recording batch by batch.

    The next batch is read while the current one is written to the client, so database
    latency overlaps the network; at most two batches are in memory, whatever the
    session's length.
    """
    later_batches = opened.plan.batches[1:]
    bodies = opened.first_batch
    next_read: asyncio.Task[list[ChunkBody]] | None = None
    # Not made current: a context entered in a generator would be exited in another frame.
    span = tracer.start_span("replay.stream")
    sent_bytes = 0
    try:
        for position in range(len(later_batches) + 1):
            if position < len(later_batches):
                next_read = asyncio.create_task(_read_batch(engine, project_id, session_id, later_batches[position]))
            for piece in _encode(bodies, output):
                sent_bytes += len(piece)
                yield piece
            if next_read is None:
                break
            bodies, next_read = await next_read, None
    finally:
        # The client went away mid-stream: do not leave a read running on its behalf.
        if next_read is not None:
            next_read.cancel()
        span.set_attribute("sightline.bytes", sent_bytes)
        span.end()


def _encode(bodies: list[ChunkBody], output: RecordingFormat) -> Iterator[bytes]:
    pending = bytearray()
    for body in bodies:
        for piece in _frame(body) if output is RecordingFormat.CHUNK_FRAMES else ndjson_line(body):
            pending += piece
            if len(pending) >= WRITE_BYTES:
                yield bytes(pending)
                pending.clear()
    # Every batch ends with a flush, so its lines leave before the next batch is awaited.
    if pending:
        yield bytes(pending)


def _frame(body: ChunkBody) -> Iterator[bytes]:
    header = msgspec.json.encode(
        {"seq": body.seq, "contentEncoding": body.content_encoding, "byteSize": len(body.data)}
    )
    yield header + b"\n"
    yield body.data


_LINE_BREAKS = bytes.maketrans(b"\r\n", b"  ")


def ndjson_line(body: ChunkBody) -> Iterator[bytes]:
    """The chunk's JSON body on one line, decompressed step by step.

    Inside valid JSON a raw line break can only be insignificant whitespace (in strings it
    must be escaped), so turning CR and LF into spaces keeps the JSON and the framing valid.
    """
    if body.content_encoding == "identity":
        yield body.data.translate(_LINE_BREAKS)
    else:
        yield from (piece.translate(_LINE_BREAKS) for piece in _gunzip(body.data))
    yield b"\n"


def _gunzip(data: bytes) -> Iterator[bytes]:
    remaining = data
    # A body may itself hold several gzip members (RFC 1952 allows it); read them all.
    while remaining:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        piece = inflater.decompress(remaining, INFLATE_STEP_BYTES)
        while piece:
            yield piece
            piece = inflater.decompress(inflater.unconsumed_tail, INFLATE_STEP_BYTES)
        if not inflater.eof:
            raise ValueError("stored replay chunk is truncated gzip")
        remaining = inflater.unused_data
