"""The door of the tracker routes: a body is read in full, under a deadline, before it may take a slot.

A cap on the tracker requests one ingest process works on at once; the rest wait at the door.
Granian's own backpressure caps connections, not requests, and trackers keep their connections
open, so it cannot be used for this. Past the cap, a request waits before it is decoded:
waiting costs the event loop nothing, so the loop's turns stay short and the batch writer
(which needs a few turns per batch) keeps up. Without a cap, an overloaded process starts work
on every request at once, each loop turn grows to hundreds of milliseconds, and the writer
falls behind (seen in the 5000-visitor load test: 50-65 % of a request's time in the writer's
queue).

Ingest is public, so the door must also hold against a client that does not play along:

- The body is read *before* a slot is taken, so a client that sends headers and then stalls
  (or trickles a byte a second) holds only its own socket, never a slot other requests need.
  Reading has a deadline: after a grace period the upload must keep a minimum average rate
  (``min_upload_bytes_per_s``), else the request is answered 408 and its connection closed.
  One rule covers both: a stalled upload fails at the end of the grace period, a trickle
  as soon as it falls behind the rate.
- A declared or streamed body over the route's limit is answered 413 before it is buffered.
- Waiting for a slot is bounded (``admission_wait_s``); past it, 503 with a Retry-After that
  grows with the queue (and with how long the database has been away) and carries jitter, so
  refused clients do not come back together.
- A client address whose requests keep being refused (4xx: made-up keys, bad bodies, a project
  over its limit or budget), or carry a User-Agent longer than any browser's, is refused 429 at
  the door, before its body is read, until its budget of refusals has refilled
  (``AddressRefusals``). Each refusal is cheap on its own; a
  flood of them is not, and an attacker's requests per second times their cost took ingest's
  worker from honest requests (`make attack`: a random-key flood, 1.5 ms each, 100 a second).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPRequestEvent, Message, Receive, ReceiveMessage, Scope, Send
from opentelemetry import trace
from opentelemetry.trace import Span

from services.common.errors import DATABASE_OUTAGE, ErrorBody, ErrorDetail
from services.common.rate_limit import CostBuckets
from services.common.telemetry import begin_request_marks, mark_request, past_span, request_mark, step_span
from services.ingest.enrichment import MAX_USER_AGENT_CHARS, IpNetwork, client_ip


@dataclass(frozen=True)
class AdmissionLimits:
    # Tracker requests in progress at once per process; 0: no cap (bodies are still read under
    # the deadline).
    max_concurrent: int
    # The most a request waits for a slot once its body is in, then 503.
    admission_wait_s: float = 5.0
    # Any upload may take this long; after it, it must have averaged min_upload_bytes_per_s.
    body_grace_s: float = 10.0
    # 4 KiB/s is slower than a 2G (EDGE) link; a tracker body is a few kB, a replay chunk tens.
    min_upload_bytes_per_s: float = 4096.0


class AddressRefusals:
    """Refusals per client address: a budget of 4xx answers a second, kept per worker process.

    The address is the socket peer, or what X-Forwarded-For says when the peer is a trusted
    proxy (enrichment.client_ip); an IPv6 address counts by its /64, the block one subscriber
    usually gets, so making up addresses within it does not reset the count. At most
    ``max_addresses`` are kept (services.common.rate_limit.CostBuckets).
    """

    def __init__(
        self,
        per_s: float,
        burst: float,
        max_addresses: int,
        trusted_proxies: Sequence[IpNetwork] = (),
        hold_s: float = 0.0,
        max_held: int = 256,
    ) -> None:
        self._budget = CostBuckets(per_s, burst, max_addresses)
        self._trusted_proxies = tuple(trusted_proxies)
        # A refused address's requests wait up to hold_s (at most max_held of them at once) before
        # their 429.
        self.hold_s = hold_s
        self.max_held = max_held

    @property
    def enabled(self) -> bool:
        return self._budget.enabled

    @property
    def addresses(self) -> int:
        return len(self._budget)

    def address(self, scope: Scope) -> str | None:
        return client_address(scope, self._trusted_proxies)

    def wait_s(self, address: str) -> float | None:
        return self._budget.wait_s(address)

    def refused(self, address: str) -> None:
        self._budget.charge(address, 1.0)


def client_address(scope: Scope, trusted_proxies: Sequence[IpNetwork]) -> str | None:
    """The address budgets count by: the peer, or X-Forwarded-For from a trusted proxy; IPv6 by its /64."""
    client = scope.get("client")
    peer = client[0] if client else None
    forwarded_for = _header(scope, b"x-forwarded-for") if trusted_proxies else None
    found = client_ip(peer, forwarded_for, trusted_proxies)
    if found is None or ":" not in found:
        return found
    try:
        return str(ipaddress.IPv6Network(f"{found}/64", strict=False))
    except ValueError:
        return found


def _raw_header(scope: Scope, wanted: bytes) -> bytes | None:
    # ASGI servers send header names lower-cased.
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return value
    return None


def _header(scope: Scope, wanted: bytes) -> str | None:
    value = _raw_header(scope, wanted)
    return None if value is None else value.decode("latin-1")


def _error_message(status: int, code: str, message: str, headers: Mapping[str, str]) -> tuple[Message, Message]:
    body = msgspec.json.encode(ErrorBody(ErrorDetail(code=code, message=message)))
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in headers.items()),
    ]
    start: Message = {"type": "http.response.start", "status": status, "headers": raw_headers}
    end: Message = {"type": "http.response.body", "body": body, "more_body": False}
    return start, end


async def _answer(send: Send, status: int, code: str, message: str, headers: Mapping[str, str]) -> None:
    start, end = _error_message(status, code, message, headers)
    await send(start)
    await send(end)


class _BodyRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _ClientGone(Exception):
    pass


class _BodyDeadline:
    """The timer of read_body_with_deadline: fires when the upload falls behind the minimum rate.

    A class, not closures: a closure that re-arms its own timer refers to itself through its
    cell, a reference cycle that held each request's task (and the context copied into it: spans,
    connection state) until the garbage collector found it. Under the 5000-visitor load those
    cycles were the collector's work: a young collection every ~1,100 requests per worker,
    freeing 20,000-60,000 objects and pausing the worker 50-120 ms on a quiet machine
    (docs/benchmarks.md, "p95b"). Here nothing refers back, and the timer's cancel() drops its
    callback, so all of it goes by reference counting when the request ends.
    """

    __slots__ = ("_limits", "_loop", "_task", "expired", "received", "started", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], limits: AdmissionLimits) -> None:
        self._loop = loop
        self._task = task
        self._limits = limits
        self.started = loop.time()
        self.received = 0
        self.expired = False
        self.timer: asyncio.TimerHandle | None = None

    def due(self) -> float:
        # The moment the upload falls behind the minimum rate, counting what it has sent.
        return self.started + self._limits.body_grace_s + self.received / self._limits.min_upload_bytes_per_s

    def arm(self) -> None:
        when = self.due()
        self.timer = self._loop.call_at(when, self._on_due, when)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()  # drops the handle's reference to _on_due
            self.timer = None

    def _on_due(self, when: float) -> None:
        lag = self._loop.time() - when
        if lag > LOOP_LAG_TOLERANCE_S:
            self.started += lag
            self.arm()
            return
        self.expired = True
        self._task.cancel()


async def read_body_with_deadline(receive: Receive, max_bytes: int, limits: AdmissionLimits) -> bytes:
    """The whole request body, or _BodyRefused (408 too slow, 413 too large) / _ClientGone.

    The deadline is the client's, not the server's: when this process is so busy that the timer
    itself fires late (the event loop lagging), the lag is added to the deadline instead of
    being blamed on the upload.

    Each message is awaited directly under one timer of the loop's (no task and no
    ``asyncio.wait`` per message: those were the largest item of our own code on the events
    path, docs/benchmarks.md); when the timer finds the upload behind, it cancels the wait.
    """
    task = asyncio.current_task()
    assert task is not None
    deadline = _BodyDeadline(asyncio.get_running_loop(), task, limits)
    parts: list[bytes] = []

    while True:
        cancelling = task.cancelling()
        deadline.arm()
        try:
            message = await receive()
        except asyncio.CancelledError:
            if deadline.expired and task.uncancel() <= cancelling:
                raise _too_slow(limits) from None
            raise  # cancelled from outside (the client went away, shutdown)
        finally:
            deadline.disarm()
        if deadline.expired:
            # receive() took the cancel and answered all the same: the deadline has passed.
            task.uncancel()
            raise _too_slow(limits)
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        if chunk:
            deadline.received += len(chunk)
            if deadline.received > max_bytes:
                raise _BodyRefused(413, "payload_too_large", f"The body is larger than {max_bytes} bytes.")
            parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _too_slow(limits: AdmissionLimits) -> _BodyRefused:
    return _BodyRefused(
        408,
        "request_timeout",
        f"The body arrived too slowly (under {limits.min_upload_bytes_per_s:.0f} bytes/s "
        f"after {limits.body_grace_s:.0f} s).",
    )


# A deadline timer that fires this much late says the event loop is lagging, not the client.
LOOP_LAG_TOLERANCE_S = 0.5


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then passes through (disconnects)."""
    sent = False

    async def replay() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            request: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
            return request
        return await receive()

    return replay


class TrackerAdmissionMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(
        self,
        limits: AdmissionLimits,
        max_body_bytes: Mapping[str, int],
        refusals: AddressRefusals | None = None,
    ) -> None:
        """max_body_bytes: the admitted paths, each with its largest body as sent."""
        self._limits = limits
        self._max_body_bytes = dict(max_body_bytes)
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0
        self._refusals = refusals if refusals is not None and refusals.enabled else None
        self._held = 0

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        max_bytes = self._max_body_bytes.get(scope["path"])
        if max_bytes is None or scope.get("method") != "POST":
            await next_app(scope, receive, send)
            return
        server = trace.get_current_span()
        if server.is_recording():
            send = _traced_dispatch_and_response(server, send)
        refusals = self._refusals
        address = refusals.address(scope) if refusals is not None else None
        if refusals is not None and address is not None:
            wait_s = refusals.wait_s(address)
            if wait_s is not None:
                seconds = max(1, math.ceil(wait_s))
                if self._held < refusals.max_held:
                    # Held before it is answered: a client that sends again as soon as it is
                    # refused (an attacker does) then sends at most its connections per hold_s,
                    # and each refusal, cheap as it is, is not repeated as fast as it can be.
                    # Waiting costs the process nothing but the request; max_held bounds those.
                    self._held += 1
                    try:
                        await asyncio.sleep(min(wait_s, refusals.hold_s))
                    finally:
                        self._held -= 1
                # Before the body is read or a key looked up: all this refusal costs is its answer.
                # The connection is closed, so the rest of the body is never read.
                await _answer(
                    send,
                    429,
                    "too_many_refusals",
                    f"Requests from this address were refused too often; retry in {seconds} s.",
                    {"Retry-After": str(seconds), "Connection": "close"},
                )
                return
            send = _counting_refusals(send, refusals, address)
            if len(_raw_header(scope, b"user-agent") or b"") > MAX_USER_AGENT_CHARS:
                # No browser sends one; a flood of them (each unique, each parsed) cost ingest as
                # much as a refused request does, so it counts like one without being refused.
                refusals.refused(address)
        declared = _content_length(scope)
        if declared is not None and declared > max_bytes:
            await _answer(
                send, 413, "payload_too_large", f"The body is larger than {max_bytes} bytes.", {"Connection": "close"}
            )
            return
        try:
            with step_span("ingest.read_body"):
                body = await read_body_with_deadline(receive, max_bytes, self._limits)
        except _BodyRefused as refused:
            # Closing the connection: what is left of the body is never read.
            await _answer(send, refused.status, refused.code, refused.message, {"Connection": "close"})
            return
        except _ClientGone:
            return
        receive = _replaying(body, receive)
        if self._limits.max_concurrent <= 0:
            await next_app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limits.max_concurrent)  # made on the worker's loop
        self._waiting += 1
        try:
            with step_span("ingest.admission_wait"):
                async with asyncio.timeout(self._limits.admission_wait_s):
                    await self._slots.acquire()
        except TimeoutError:
            # Requests pile up at the door when commits stall, so a database outage widens it too.
            backlog = self._waiting / self._limits.max_concurrent
            await _answer(
                send,
                503,
                "overloaded",
                "This ingest process has more requests than it can take; retry after Retry-After seconds.",
                {"Retry-After": str(DATABASE_OUTAGE.retry_after_s(backlog))},
            )
            return
        finally:
            self._waiting -= 1
        mark_request("routed")  # ingest.route, from here to the handler's first step
        try:
            await next_app(scope, receive, send)
        finally:
            self._slots.release()


def _traced_dispatch_and_response(server: Span, send: Send) -> Send:
    """For a traced request, two steps of its server span that no code inside them can time: from
    the span's start to this middleware (the tracing middleware's own work and the framework's
    routing to here), "ingest.dispatch"; and its answer, "ingest.respond": from where its task ran
    again after the commit (its "answer" mark; else the response's first message) to the return
    of its last send: the handler's return, the response built, its bytes handed to the server
    (under load mostly the event loop's turns between those), timed around the `send` returned."""
    started_ns: int | None = getattr(server, "start_time", None)
    if started_ns is not None:
        past_span("ingest.dispatch", started_ns, time.time_ns(), server)
    begin_request_marks()
    responding_ns = 0

    async def timed(message: Message) -> None:
        nonlocal responding_ns
        if message["type"] == "http.response.start":
            responding_ns = request_mark("answer") or time.time_ns()
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False) and responding_ns:
            # The tracing middleware ends the server span as the last send returns, before this does.
            ended_ns: int | None = getattr(server, "end_time", None)
            past_span("ingest.respond", responding_ns, ended_ns or time.time_ns(), server)

    return timed


def _counting_refusals(send: Send, refusals: AddressRefusals, address: str) -> Send:
    """send, charging the address's budget when the answer is a refusal (4xx).

    Not 408: a slow upload costs ingest a socket and a timer, and an honest phone on a bad link
    gets it too.
    """

    async def counting(message: Message) -> None:
        status = message["status"] if message["type"] == "http.response.start" else 0
        if 400 <= status < 500 and status != 408:
            refusals.refused(address)
        await send(message)

    return counting


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
