"""Decisions of the replay service: pagination, seeking, how a recording is streamed. No SQL here."""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db import read_connection
from services.common.errors import ApiError
from services.common.gzip_stream import inflate_gzip
from services.common.telemetry import step_span, tracer
from services.replay import erasure, repository
from services.replay.repository import ChunkBody, ReadBatch, SessionFilters
from services.replay.schemas import PersonDeletion, SessionDetail, SessionPage, SessionSummary

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


class RecordingFormat(enum.Enum):
    # One stored chunk body per line, decompressed by the server: works with any client.
    NDJSON = "application/x-ndjson"
    # Stored bytes passed through as they are, each behind a one-line JSON frame header;
    # the client inflates each frame (in a browser: one DecompressionStream per frame).
    # Chosen over Content-Encoding: gzip on concatenated members because Chromium decodes
    # only the first member of such a body and silently drops the rest.
    CHUNK_FRAMES = "application/vnd.sightline.replay-chunks"


# --- session list cursor ------------------------------------------------------------------


def encode_cursor(session: SessionSummary) -> str:
    raw = msgspec.json.encode([session.started_at.isoformat(), session.session_id])
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


def _not_found(session_id: str) -> ApiError:
    return ApiError(404, "session_not_found", f"No recorded session {session_id!r} in this project.", field="id")


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


class ReplayService:
    """The replay API's decisions. Made once per worker, in the app's lifespan.

    The session list, a session's detail and erasure run in the request's transaction, which
    the route owns. A recording is the exception: it reads its chunks batch by batch, each
    batch in a short read of its own from ``engine``, so a slow player downloading a long
    session never holds a pooled connection (nor, through PgBouncer, a server connection).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list_sessions(
        self,
        connection: AsyncConnection,
        project_id: int,
        filters: SessionFilters,
        *,
        cursor: str | None,
        limit: int,
    ) -> SessionPage:
        after = decode_cursor(cursor) if cursor else None
        # One row more than asked tells whether another page exists without a count.
        sessions = await repository.list_sessions(connection, project_id, filters, after=after, limit=limit + 1)
        page, more = sessions[:limit], len(sessions) > limit
        return SessionPage(sessions=page, next_cursor=encode_cursor(page[-1]) if more and page else None)

    async def session_detail(self, connection: AsyncConnection, project_id: int, session_id: str) -> SessionDetail:
        """The session and its chunk index, read in the request's transaction so they agree."""
        session = await repository.find_session(connection, project_id, session_id)
        if session is None:
            raise _not_found(session_id)
        return SessionDetail(
            session=session,
            chunks=await repository.chunk_index(connection, project_id, session_id),
            visit=await repository.session_visit(connection, project_id, session_id),
        )

    async def open_recording(
        self, project_id: int, session_id: str, from_ms: int | None, to_ms: int | None
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
            opened = await self._plan_and_read_first(project_id, session_id, from_ms, to_ms)
            span.set_attribute("sightline.chunks", len(opened.first_batch))
        return opened

    async def _plan_and_read_first(
        self, project_id: int, session_id: str, from_ms: int | None, to_ms: int | None
    ) -> OpenedRecording:
        async with read_connection(self._engine) as connection:
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

    async def _read_batch(self, project_id: int, session_id: str, batch: ReadBatch) -> list[ChunkBody]:
        with step_span("replay.read_chunks") as span:
            span.set_attribute("sightline.first_seq", batch.first_seq)
            span.set_attribute("sightline.last_seq", batch.last_seq)
            async with read_connection(self._engine) as connection:
                return await repository.chunk_bodies(
                    connection, project_id, session_id, batch.first_seq, batch.last_seq
                )

    async def stream_recording(
        self, project_id: int, session_id: str, opened: OpenedRecording, output: RecordingFormat
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
                    next_read = asyncio.create_task(self._read_batch(project_id, session_id, later_batches[position]))
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

    async def delete_person(self, connection: AsyncConnection, project_id: int, distinct_id: str) -> PersonDeletion:
        """GDPR erasure, in the request's write transaction: all of it is deleted, or none (erasure.py)."""
        return await erasure.erase_person(connection, project_id, distinct_id)


# --- recording bytes -----------------------------------------------------------------------


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
        yield from (piece.translate(_LINE_BREAKS) for piece in inflate_gzip(body.data))
    yield b"\n"
