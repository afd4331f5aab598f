"""The batch writer: rows from many concurrent requests, committed together every few ms.

One INSERT and one pool checkout per request is the wall the seed hit (about 2,100
single-row inserts/s through PgBouncer here, against 8,000-16,000 rows/s batched). Here a
request hands its rows to the writer and waits; a writer task takes everything queued,
writes it in one transaction (one statement per table) and releases each waiting request
only when its rows are committed. Database round trips grow with time, not with requests.
With WriterLimits.split_lanes, events and replay chunks queue in separate lanes, each with its
own writer tasks and transactions, so an events request never waits for replay bytes.

An acknowledged event is a stored event: a request is answered 202 only after the commit
that holds its rows succeeded. Anything else (database unreachable, queue full, commit
too slow, shutdown) is a 503 with Retry-After, and the tracker's retry with the same uuids
is stored once.

The queue is bounded by rows and by bytes (replay chunks are up to megabytes each). A
submission whose request stopped waiting (commit timeout, client gone) and that no batch has
picked yet is dropped, so a retry does not queue a second copy next to it; one already in a
batch may still commit, which is harmless: events with a uuid go through ingested_events and a
chunk is keyed by (session, seq), so the retry stores nothing twice. A batch that fails for a
reason other than the database being unreachable is split in halves until the submissions at
fault are alone: each of those fails with its own error, every other one is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import asyncpg
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import asyncpg_connection
from services.common.errors import (
    DATABASE_OUTAGE,
    ApiError,
    ServiceUnavailable,
    is_database_unavailable,
    retry_after_s,
)
from services.common.telemetry import mark_request, tracer, unsampled_span
from services.ingest import repository
from services.ingest.repository import ChunkRow, EventRow

logger = logging.getLogger(__name__)

# Deadlocks and serialisation failures are safe to retry: the transaction was rolled back.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}
_MAX_RETRIES = 3
# Requests already queued that make the writer skip its linger.
LINGER_UNLESS_QUEUED = 16


@dataclass
class BatchTimings:
    """When the transaction holding a batch reached each step (perf_counter seconds)."""

    picked_at: float = 0.0
    connected_at: float = 0.0
    committed_at: float = 0.0


@dataclass(eq=False)
class Submission:
    events: list[EventRow]
    chunks: list[ChunkRow]
    done: asyncio.Future[None]
    enqueued_at: float = field(default_factory=time.perf_counter)
    # Shared by every submission of the batch that carried this one.
    timings: BatchTimings | None = None
    # Its request stopped waiting; not written unless a batch already holds it.
    abandoned: bool = False
    queued_bytes: int = 0

    @property
    def rows(self) -> int:
        return len(self.events) + len(self.chunks)

    @property
    def chunk_bytes(self) -> int:
        return sum(len(chunk.data) for chunk in self.chunks)

    def estimated_bytes(self) -> int:
        """Roughly what the rows hold in memory: the chunks' data plus the events' text."""
        return self.chunk_bytes + sum(_event_bytes(event) for event in self.events)


# An event row's fixed fields (ids, timestamps, enrichment) in memory, roughly.
_EVENT_ROW_BYTES = 512


def _event_bytes(event: EventRow) -> int:
    texts = len(event.url) + len(event.title or "") + len(event.referrer or "")
    properties = sum(len(key) + len(str(value)) for key, value in event.properties.items())
    return _EVENT_ROW_BYTES + texts + properties


@dataclass(frozen=True)
class WriterLimits:
    linger_s: float
    max_batch_rows: int
    # Replay bytes per batch: a batch is one message, and a chunk may be megabytes.
    max_batch_chunk_bytes: int
    max_queue_rows: int
    concurrency: int
    commit_timeout_s: float
    max_queue_bytes: int = 128 * 1024 * 1024
    # Events and replay chunks in separate transactions, each kind with its own `concurrency`
    # writer tasks: an events request then never waits for a batch's replay bytes (tens of kB
    # per first chunk: their statement, their WAL and its flush). Off by default (settings.py).
    split_lanes: bool = False


EVENTS_LANE = 0
CHUNKS_LANE = 1


class _Lane:
    """One queue and the writer tasks that empty it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: deque[Submission] = deque()
        self.wakeup = asyncio.Event()
        # Batches of this lane being written now.
        self.in_flight = 0


class BatchWriter:
    def __init__(self, engine: AsyncEngine, limits: WriterLimits) -> None:
        self._engine = engine
        self._limits = limits
        lane_names = ("events", "chunks") if limits.split_lanes else ("all",)
        self._lanes = [_Lane(name) for name in lane_names]
        self._queued_rows = 0
        self._queued_bytes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False
        self._in_flight = 0
        # Counters for logs and the load report.
        self.batches_committed = 0
        self.rows_committed = 0

    async def start(self) -> None:
        self._accepting = True
        self._tasks = [
            asyncio.create_task(self._run(lane), name=f"batch-writer-{lane.name}-{n}")
            for lane in self._lanes
            for n in range(self._limits.concurrency)
        ]

    async def submit(self, events: list[EventRow], chunks: list[ChunkRow]) -> None:
        """Returns once the rows are committed; raises ServiceUnavailable otherwise."""
        if not self._accepting:
            # Not the database's fault, so no outage in it; jittered all the same, since every
            # tracker of this process hears it at once.
            raise ServiceUnavailable("shutting_down", "This ingest process is shutting down; retry.", retry_after_s())
        submission = Submission(events, chunks, asyncio.get_running_loop().create_future())
        submission.queued_bytes = submission.estimated_bytes()
        if (
            self._queued_rows + submission.rows > self._limits.max_queue_rows
            or self._queued_bytes + submission.queued_bytes > self._limits.max_queue_bytes
        ):
            raise ServiceUnavailable(
                "writer_queue_full",
                "Too much is waiting to be written; retry shortly.",
                DATABASE_OUTAGE.retry_after_s(backlog=3),
            )
        lane = self._lanes[CHUNKS_LANE if chunks and len(self._lanes) > 1 else EVENTS_LANE]
        lane.queue.append(submission)
        self._queued_rows += submission.rows
        self._queued_bytes += submission.queued_bytes
        lane.wakeup.set()
        try:
            # shield: a timed-out request stops waiting, but its rows may still commit;
            # the client's retry with the same uuids is then a no-op.
            async with asyncio.timeout(self._limits.commit_timeout_s):
                await asyncio.shield(submission.done)
        except TimeoutError as exc:
            self._abandon(submission)
            # Nothing this request waited for was committed for commit_timeout_s: for Retry-After,
            # the database has been away at least that long.
            DATABASE_OUTAGE.failed(since=time.monotonic() - self._limits.commit_timeout_s)
            raise ServiceUnavailable("commit_timeout", "The database did not commit in time; retry.") from exc
        except asyncio.CancelledError:
            self._abandon(submission)  # the client went away
            raise
        finally:
            _record_write_spans(submission)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _abandon(self, submission: Submission) -> None:
        submission.abandoned = True
        # Nobody awaits the outcome any more; take it so asyncio does not log it as lost.
        submission.done.add_done_callback(_consume_outcome)

    async def close(self) -> None:
        """Stops taking submissions, writes everything already queued, then stops."""
        self._accepting = False
        while any(lane.queue for lane in self._lanes) or self._in_flight:
            for lane in self._lanes:
                lane.wakeup.set()
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        logger.info("batch writer stopped after %d batches, %d rows", self.batches_committed, self.rows_committed)

    def _take_batch(self, queue: deque[Submission]) -> list[Submission]:
        batch: list[Submission] = []
        rows = chunk_bytes = 0
        timings = BatchTimings(picked_at=time.perf_counter())
        while queue and (
            not batch
            or (
                rows + queue[0].rows <= self._limits.max_batch_rows
                and chunk_bytes + queue[0].chunk_bytes <= self._limits.max_batch_chunk_bytes
            )
        ):
            submission = queue.popleft()
            self._queued_rows -= submission.rows
            self._queued_bytes -= submission.queued_bytes
            if submission.abandoned:
                # Its request has answered 503 already; the client's retry brings the rows again.
                if not submission.done.done():
                    submission.done.set_exception(
                        ServiceUnavailable(
                            "commit_timeout", "The request stopped waiting before its rows were written."
                        )
                    )
                continue
            submission.timings = timings
            rows += submission.rows
            chunk_bytes += submission.chunk_bytes
            batch.append(submission)
        return batch

    async def _run(self, lane: _Lane) -> None:
        # The writer's own statements belong to no request: keep them out of the traces
        # (each request gets copies of its batch's steps instead, see _record_write_spans).
        with trace.use_span(unsampled_span(), end_on_exit=False):
            await self._loop(lane)

    async def _loop(self, lane: _Lane) -> None:
        queue = lane.queue
        while True:
            while not queue:
                lane.wakeup.clear()
                await lane.wakeup.wait()
            if self._limits.linger_s > 0 and lane.in_flight and len(queue) < LINGER_UNLESS_QUEUED:
                # A moment for concurrent requests to join this batch, while another batch of
                # the lane is being written (and will share the WAL flush with it). Not on an idle
                # lane: the request would wait linger_s for nothing (issue 18 item 3). Not when
                # enough are already waiting: on a busy process the sleep costs a loop turn.
                await asyncio.sleep(self._limits.linger_s)
            batch = self._take_batch(queue)
            if not batch:
                continue
            self._in_flight += 1
            lane.in_flight += 1
            try:
                await self._write(batch)
            finally:
                self._in_flight -= 1
                lane.in_flight -= 1

    async def _write(self, batch: list[Submission]) -> None:
        try:
            await self._commit_with_retries(batch)
        except Exception as exc:
            if len(batch) > 1 and not is_database_unavailable(exc):
                # One bad submission must not fail its neighbours: halve until it is alone
                # (about 2 log2(n) statements per bad submission, not n).
                logger.warning("batch of %d failed (%s); writing it in halves", len(batch), exc)
                middle = len(batch) // 2
                await self._write(batch[:middle])
                await self._write(batch[middle:])
                return
            error = _client_error(exc)
            for submission in batch:
                if not submission.done.done():
                    submission.done.set_exception(error)
            return
        self.batches_committed += 1
        DATABASE_OUTAGE.recovered()
        for submission in batch:
            self.rows_committed += submission.rows
            if not submission.done.done():
                submission.done.set_result(None)

    async def _commit_with_retries(self, batch: list[Submission]) -> None:
        events = _unique_events([row for submission in batch for row in submission.events])
        chunks = _unique_chunks([row for submission in batch for row in submission.chunks])
        for attempt in range(1, _MAX_RETRIES + 1):
            try:
                timings = batch[0].timings or BatchTimings(picked_at=time.perf_counter())
                async with self._engine.connect() as connection:
                    timings.connected_at = time.perf_counter()
                    driver = await asyncpg_connection(connection)
                    try:
                        # One message, one implicit transaction: committed when it returns.
                        await repository.write_batch(driver, events, chunks)
                    except BaseException as exc:
                        if is_database_unavailable(exc) or not isinstance(exc, Exception):
                            # SQLAlchemy did not see this fail: keep the link out of the pool.
                            await connection.invalidate()
                        raise
                    timings.committed_at = time.perf_counter()
                return
            except asyncpg.PostgresError as exc:
                if exc.sqlstate in _RETRYABLE_SQLSTATES and attempt < _MAX_RETRIES:
                    continue
                raise


def _consume_outcome(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def _unique_events(rows: list[EventRow]) -> list[EventRow]:
    # The same client uuid twice in one statement would be stored twice; keep the first.
    seen: set[tuple[int, object]] = set()
    unique: list[EventRow] = []
    for row in rows:
        if row.event_uuid is not None:
            key = (row.project_id, row.event_uuid)
            if key in seen:
                continue
            seen.add(key)
        unique.append(row)
    return unique


def _unique_chunks(rows: list[ChunkRow]) -> list[ChunkRow]:
    # Sorted by key, so concurrent writers lock sessions in the same order.
    by_key = {(row.project_id, row.session_id, row.seq): row for row in reversed(rows)}
    return [by_key[key] for key in sorted(by_key)]


def _client_error(exc: Exception) -> Exception:
    if is_database_unavailable(exc):
        DATABASE_OUTAGE.failed()
        return ServiceUnavailable("database_unavailable", "The database cannot be reached right now; retry later.")
    if isinstance(exc, asyncpg.DataError):
        return ApiError(422, "rejected_by_database", f"The database refused a value: {exc}.")
    logger.error("batch write failed", exc_info=exc)
    return exc


def _record_write_spans(submission: Submission) -> None:
    """Spans in the request's trace for the steps of the shared transaction that carried it.

    The writer's transaction serves many requests, so each request gets its own copy of
    the steps (with the real times): queue wait, pool checkout, SQL, commit.
    """
    timings = submission.timings
    if timings is None or not tracer_is_recording():
        return
    epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
    # The statements and their commit are one round trip (repository.write_batch), so the commit
    # has no span of its own: it is inside db.sql.
    # ingest.resume_wait: from the commit's return in the writer's task to this request's task
    # running again, i.e. the ready callbacks queued ahead of it: the event loop's lag.
    steps = (
        ("ingest.writer.queue_wait", submission.enqueued_at, timings.picked_at),
        ("db.pool_checkout", timings.picked_at, timings.connected_at),
        ("db.sql", timings.connected_at, timings.committed_at),
        ("ingest.resume_wait", timings.committed_at, time.perf_counter()),
    )
    for name, started, ended in steps:
        if started and ended >= started:
            span = tracer.start_span(name, start_time=epoch_offset_ns + int(started * 1e9))
            span.set_attribute("sightline.rows", submission.rows)
            span.end(end_time=epoch_offset_ns + int(ended * 1e9))
    # The request's answer begins where the loop's lag ended (its span: ingest.respond).
    mark_request("answer", epoch_offset_ns + int(steps[-1][2] * 1e9))


def tracer_is_recording() -> bool:
    # Only a sampled request has a recording span to hang these on.
    return trace.get_current_span().is_recording()
