"""The load generator: one asyncio (uvloop) process, raw HTTP/1.1 keep-alive connections, one per user.

Chosen over Locust by measurement against the no-op app alone (docs/load-testing.md, "Choosing the
engine"): at 5000 visitors Locust's own queueing added far more latency than it measured.
`sightline load` starts it as `python -m tools.loadtest.engine` with the plan in SIGHTLINE_LOAD_*
variables (tools.loadtest.plan) and reads what it writes into the run folder, in the same shapes
as the Locust scenario (tools/loadtest/locustfile.py, still there for `--engine locust`):

- `timeseries.jsonl` every SAMPLE_S: users, per endpoint requests / failures / percentiles of the
  interval, the ingest and no-op interval histograms, failures so far; plus the generator's own
  figures: its CPU seconds in the interval (from /proc, through os.times) and its scheduling
  delay (how late each request left against its plan) as a histogram;
- `final.json`, `acknowledged-<pid>.json`, and with `record_timeline` the fault run's
  `requests-<pid>.jsonl` and `rows-<pid>.txt` (tools.loadtest.timeline).

Each visitor has a fixed plan: its first request at its place in the ramp, then one every
`pacing_s` after the previous planned time (or after its previous delivery ended, if that took
longer: a slow server is not the generator being late). A request's scheduling delay is the time
between that planned moment and the moment its bytes are written.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from services.common.gc_pauses import GcPauseLog
from tools.loadtest import payloads, stats
from tools.loadtest.check import Acknowledged, write_acknowledged
from tools.loadtest.hosts import require_loopback
from tools.loadtest.plan import PAYLOADS_FILE, LoadPlan
from tools.loadtest.readers import ReaderCall, readable_endpoints
from tools.loadtest.timeline import RequestRecord, TimelineWriter

SAMPLE_S = 2.0
# As the tracker (tracker/src/transport.js), and as the Locust scenario.
MAX_ATTEMPTS = 8
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
MAX_RETRY_AFTER_S = 30.0
NETWORK_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
RETRIED_SUFFIX = " (retried)"
FIRST_CHUNK = "POST /v1/replay (first chunk)"
TRACKER_ENDPOINTS = (FIRST_CHUNK, "POST /v1/replay", "POST /v1/events")
NOOP_ENDPOINT = "POST /v1/noop"


class NetworkError(Exception):
    """No complete answer: refused, reset, closed or timed out."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection to one origin, opened on first use and after any failure."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(require_loopback(url))
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)
            self._reader, self._writer = reader, writer
            return reader, writer
        return self._reader, self._writer

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> Response:
        try:
            return await asyncio.wait_for(self._exchange(method, path, headers, body), NETWORK_TIMEOUT_S)
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            self.close()
            raise NetworkError(type(exc).__name__) from exc

    async def _exchange(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> Response:
        reader, writer = await self._open()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        answer: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                answer[name.strip().lower()] = value.strip()
        if "content-length" in answer:
            content = await reader.readexactly(int(answer["content-length"]))
        elif answer.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            content = b"".join(part[:-2] for part in parts)
        else:
            content = await reader.read()
            self.close()
        if answer.get("connection", "").lower() == "close":
            self.close()
        return Response(status, answer, content)


@dataclass
class Endpoint:
    requests: int = 0
    failures: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    interval_requests: int = 0
    interval_failures: int = 0
    interval_histogram: dict[int, int] = field(default_factory=dict)
    total_ms: float = 0.0
    max_ms: float = 0.0


class Statistics:
    """Per endpoint, cumulative and per interval; failures by (endpoint, error); scheduling delay."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.schedule_delay: dict[int, int] = {}
        self.interval_schedule_delay: dict[int, int] = {}
        self.first_request: float | None = None
        self.last_request: float | None = None

    def record(self, name: str, milliseconds: float, error: str | None) -> None:
        now = time.time()
        self.first_request = self.first_request or now
        self.last_request = now
        entry = self.endpoints.setdefault(name, Endpoint())
        bucket = stats.bucket(milliseconds)
        entry.requests += 1
        entry.interval_requests += 1
        entry.histogram[bucket] = entry.histogram.get(bucket, 0) + 1
        entry.interval_histogram[bucket] = entry.interval_histogram.get(bucket, 0) + 1
        entry.total_ms += milliseconds
        entry.max_ms = max(entry.max_ms, milliseconds)
        if error is not None:
            entry.failures += 1
            entry.interval_failures += 1
            self.errors[(name, error)] = self.errors.get((name, error), 0) + 1

    def late(self, milliseconds: float) -> None:
        bucket = stats.bucket(max(0.0, milliseconds))
        self.schedule_delay[bucket] = self.schedule_delay.get(bucket, 0) + 1
        self.interval_schedule_delay[bucket] = self.interval_schedule_delay.get(bucket, 0) + 1

    def take_interval(self) -> dict[str, Any]:
        endpoints: dict[str, Any] = {}
        intervals: dict[str, dict[int, int]] = {}
        for name, entry in self.endpoints.items():
            intervals[name] = entry.interval_histogram
            endpoints[name] = {
                "requests": entry.interval_requests,
                "failures": entry.interval_failures,
                **stats.summary(entry.interval_histogram),
            }
            entry.interval_requests = entry.interval_failures = 0
            entry.interval_histogram = {}
        ingest = stats.merge(intervals.get(name, {}) for name in TRACKER_ENDPOINTS)
        delay = self.interval_schedule_delay
        self.interval_schedule_delay = {}
        return {
            "endpoints": endpoints,
            "tracker": {
                "requests": sum(endpoints.get(name, {}).get("requests", 0) for name in TRACKER_ENDPOINTS),
                "failures": sum(endpoints.get(name, {}).get("failures", 0) for name in TRACKER_ENDPOINTS),
                **stats.summary(ingest),
            },
            "histograms": {"ingest": ingest, "noop": intervals.get(NOOP_ENDPOINT, {}), "schedule_delay": delay},
            "schedule_delay": stats.summary(delay),
            "errors": {f"{name}: {error}": count for (name, error), count in self.errors.items()},
        }

    def final(self) -> dict[str, Any]:
        start = self.first_request or time.time()
        duration = max(1e-9, (self.last_request or start) - start)
        endpoints = {
            name: {
                "requests": entry.requests,
                "failures": entry.failures,
                "avg": entry.total_ms / entry.requests if entry.requests else 0.0,
                "max": entry.max_ms,
                "rps": entry.requests / duration,
                **stats.summary(entry.histogram),
            }
            for name, entry in self.endpoints.items()
        }
        ingest = stats.merge(self.endpoints[name].histogram for name in TRACKER_ENDPOINTS if name in self.endpoints)
        return {
            "duration_s": duration,
            "endpoints": endpoints,
            "tracker": {
                "requests": sum(endpoints.get(name, {}).get("requests", 0) for name in TRACKER_ENDPOINTS),
                "failures": sum(endpoints.get(name, {}).get("failures", 0) for name in TRACKER_ENDPOINTS),
                **stats.summary(ingest),
            },
            "errors": [
                {"name": name, "error": error, "occurrences": count} for (name, error), count in self.errors.items()
            ],
            "schedule_delay": {**stats.summary(self.schedule_delay), "histogram": self.schedule_delay},
        }


def error_code(response: Response) -> str:
    try:
        code = json.loads(response.body or b"{}").get("error", {}).get("code", "")
    except (ValueError, AttributeError):
        code = ""
    return f"HTTP {response.status} {code}".strip()


def retry_after_s(response: Response | None, failed_attempts: int) -> float:
    """Retry-After when the answer has it (capped), else the tracker's exponential backoff with jitter."""
    header = response.headers.get("retry-after") if response is not None else None
    if header:
        try:
            # Plus up to half again at random, as the tracker (and the Locust scenario) do.
            return min(MAX_RETRY_AFTER_S, max(0.0, float(header))) * (1 + random.random() / 2)
        except ValueError:
            pass
    backoff = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** (failed_attempts - 1))
    return backoff / 2 + random.random() * backoff / 2


MOST_BEHIND = 6


def next_planned(planned: float, now: float, pacing_s: float, most_behind: int = MOST_BEHIND) -> float:
    """The visitor's next planned send, on its own phase as the tracker's setInterval keeps it.

    Intervals missed during a long (retried) delivery are sent back to back, at most most_behind
    of them, as the tracker's queue would; then the visitor is on its own phase again (restarting
    the period when a long delivery ended kept visitors refused together in step after an outage).
    """
    upcoming = planned + pacing_s
    oldest = now - most_behind * pacing_s
    if upcoming < oldest:
        upcoming += math.ceil((oldest - upcoming) / pacing_s) * pacing_s
    return upcoming


def visitor_start_s(plan: LoadPlan, index: int) -> float:
    """When visitor `index` (0-based) joins, in seconds after the start: its place in the ramp."""
    if plan.shape == "steps":
        per_step = math.ceil(plan.users / plan.steps)
        step, place = divmod(index, per_step)
        step_s = plan.ramp_up_s / plan.steps
        # Each step is reached within a fifth of its time, then held until the next.
        return step * step_s + place / per_step * step_s / 5
    return index * plan.ramp_up_s / plan.users


def visitor_stop_s(plan: LoadPlan, index: int) -> float:
    """When visitor `index` leaves: the last to join leave first, over the ramp down."""
    return plan.ramp_up_s + plan.hold_s + (plan.users - index) / plan.users * plan.ramp_down_s


class Engine:
    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.run_dir = Path(plan.run_dir)
        prepared = self.run_dir / PAYLOADS_FILE
        self.pools = payloads.load_pools(prepared) if prepared.exists() else payloads.build_pools(plan.project_key)
        self.stats = Statistics()
        self.acknowledged = Acknowledged()
        self.timeline = TimelineWriter(self.run_dir) if plan.record_timeline else None
        self.deliveries = itertools.count(1)
        self._active_users = 0
        # The most users at once since the last sample: a sample's "users".
        self.interval_users = 0
        self.started = 0.0
        self.last_sample = (0.0, 0.0)
        self.stopping = False

    @property
    def active_users(self) -> int:
        return self._active_users

    @active_users.setter
    def active_users(self, value: int) -> None:
        self._active_users = value
        self.interval_users = max(self.interval_users, value)

    def take_users(self) -> int:
        users, self.interval_users = self.interval_users, self._active_users
        return users

    # -- sending -------------------------------------------------------------------------------

    async def send(
        self, connection: Connection, method: str, path: str, name: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[Response | None, float, float]:
        """One attempt: (answer or None, start epoch, ms)."""
        wall = time.time()
        started = time.perf_counter()
        try:
            response: Response | None = await connection.request(method, path, headers, body)
        except NetworkError:
            response = None
        return response, wall, (time.perf_counter() - started) * 1000

    def _timeline(
        self, wall: float, ms: float, name: str, response: Response | None, outcome: str, delivery: str | None
    ) -> None:
        if self.timeline is None:
            return
        status = response.status if response is not None else 0
        error = "" if response is not None else "NetworkError"
        if response is not None and status >= 300:
            error = error_code(response).removeprefix(f"HTTP {status}").strip()
        if status == 503 and response is not None and not response.headers.get("retry-after"):
            error = (error + "; " if error else "") + "no Retry-After"
        self.timeline.request(RequestRecord(wall, ms, name, status, outcome, error, delivery))  # type: ignore[arg-type]

    async def deliver(self, connection: Connection, path: str, name: str, body: bytes, headers: dict[str, str]) -> bool:
        """Posts until a 202, retrying 503s and lost connections with the same body, as the tracker does."""
        delivery = f"{os.getpid()}-{next(self.deliveries)}"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            response, wall, ms = await self.send(connection, "POST", path, name, headers, body)
            if response is not None and response.status == 202:
                self.stats.record(name, ms, None)
                self._timeline(wall, ms, name, response, "ok", delivery)
                return True
            if (response is None or response.status == 503) and attempt < MAX_ATTEMPTS:
                self.stats.record(name + RETRIED_SUFFIX, ms, None)
                self._timeline(wall, ms, name, response, "retried", delivery)
                self.acknowledged.retried_attempts += 1
                await asyncio.sleep(retry_after_s(response, attempt))
                continue
            error = error_code(response) if response is not None else "network error: NetworkError"
            self.stats.record(name, ms, error)
            self._timeline(wall, ms, name, response, "failed", delivery)
            return False
        return False

    # -- users ---------------------------------------------------------------------------------

    async def _wait_until(self, moment: float) -> None:
        delay = moment - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def visitor(self, index: int) -> None:
        plan = self.plan
        planned = self.started + visitor_start_s(plan, index)
        stop_at = self.started + visitor_stop_s(plan, index)
        await self._wait_until(planned)
        identity = payloads.VisitorIdentity(plan.project_key)
        variant = random.randrange(1 << 16)
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": random.choice(payloads.USER_AGENTS),
            "Origin": "https://example.com",
        }
        connection = Connection(plan.ingest_url)
        self.active_users += 1
        seq = 0
        # The earliest the next request could leave: its plan, or the end of the previous delivery
        # (a slow or retried delivery is the server's time, not the generator being late).
        ready_at = planned
        try:
            while planned < stop_at and not self.stopping:
                await self._wait_until(planned)
                self.stats.late((time.monotonic() - max(planned, ready_at)) * 1000)
                if plan.noop_only:
                    await self.deliver(
                        connection,
                        "/v1/noop",
                        NOOP_ENDPOINT,
                        payloads.noop_body(self.pools, identity, variant),
                        headers,
                    )
                else:
                    await self.tracker_delivery(connection, identity, seq, variant, headers)
                seq += 1
                ready_at = time.monotonic()
                planned = next_planned(planned, ready_at, plan.pacing_s)
        finally:
            self.active_users -= 1
            connection.close()

    async def tracker_delivery(
        self,
        connection: Connection,
        identity: payloads.VisitorIdentity,
        seq: int,
        variant: int,
        headers: dict[str, str],
    ) -> None:
        request = payloads.tracker_request(self.pools, identity, seq, variant)
        name = FIRST_CHUNK if seq == 0 else f"POST {request.path}"
        self.acknowledged.deliveries += 1
        delivered: bool | None = None
        try:
            delivered = await self.deliver(connection, request.path, name, request.body, headers)
        finally:
            if delivered is None:  # cancelled at the run's end: the server may have committed it
                self.acknowledged.interrupted_deliveries += 1
                self.acknowledged.events_in_interrupted_deliveries += request.events
                self.acknowledged.replay_chunks_in_interrupted_deliveries += request.replay_chunks
                if self.timeline is not None:
                    self.timeline.rows("doubt", request.event_uuids, request.chunk_key)
        if delivered:
            self.acknowledged.events += request.events
            self.acknowledged.replay_chunks += request.replay_chunks
        else:
            self.acknowledged.failed_deliveries += 1
            self.acknowledged.events_in_failed_deliveries += request.events
            self.acknowledged.replay_chunks_in_failed_deliveries += request.replay_chunks
        if self.timeline is not None:
            self.timeline.rows("ack" if delivered else "doubt", request.event_uuids, request.chunk_key)

    async def noop_visitor(self) -> None:
        """The no-op baseline at the visitors' pace, each with a random phase; runs for the whole plan."""
        plan = self.plan
        identity = payloads.VisitorIdentity(plan.project_key)
        variant = random.randrange(1 << 16)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        connection = Connection(plan.ingest_url)
        planned = self.started + random.uniform(0, plan.pacing_s)
        stop_at = self.started + plan.total_s
        self.active_users += 1
        try:
            while planned < stop_at and not self.stopping:
                await self._wait_until(planned)
                self.stats.late((time.monotonic() - planned) * 1000)
                body = payloads.noop_body(self.pools, identity, variant)
                await self.deliver(connection, "/v1/noop", NOOP_ENDPOINT, body, headers)
                planned = max(planned + plan.pacing_s, time.monotonic())  # a baseline: no catching up
        finally:
            self.active_users -= 1
            connection.close()

    async def reader(self) -> None:
        """A dashboard or replay viewer: readiness and the read endpoints the services publish, every 5-15 s."""
        plan = self.plan
        authorization = {"Authorization": f"Bearer {plan.secret_key}"}
        calls: list[tuple[Connection, ReaderCall]] = []
        self.active_users += 1
        try:
            for service, base in (("query", plan.query_url), ("replay", plan.replay_url)):
                connection = Connection(base)
                calls.append((connection, ("GET", "/health/ready", f"GET {service} /health/ready", None)))
                name = f"GET {service} /schema/openapi.json"
                response, _, ms = await self.send(connection, "GET", "/schema/openapi.json", name, {}, None)
                if response is None or response.status != 200:
                    self.stats.record(name, ms, error_code(response) if response else "network error: NetworkError")
                    continue
                self.stats.record(name, ms, None)
                document = json.loads(response.body or b"{}")
                for method, url, call_name, body in readable_endpoints(service, base, document):
                    calls.append((connection, (method, url.removeprefix(base), call_name, body)))
            stop_at = self.started + plan.total_s
            while time.monotonic() < stop_at and not self.stopping:
                for connection, (method, path, name, body) in calls:
                    headers = {**authorization, "Content-Type": "application/json"} if body else authorization
                    response, wall, ms = await self.send(connection, method, path, name, headers, body)
                    failed = response is None or response.status >= 400
                    error = (error_code(response) if response else "network error: NetworkError") if failed else None
                    self.stats.record(name, ms, error)
                    self._timeline(wall, ms, name, response, "failed" if failed else "ok", None)
                await asyncio.sleep(max(0.0, min(random.uniform(5, 15), stop_at - time.monotonic())))
        finally:
            self.active_users -= 1
            for connection, _ in calls:
                connection.close()

    # -- the run ---------------------------------------------------------------------------------

    def write_sample(self) -> None:
        """One line of timeseries.jsonl: the interval since the previous one."""
        now, cpu = time.time(), cpu_seconds()
        record: dict[str, Any] = {
            "t": now,
            "elapsed": time.monotonic() - self.started,
            "interval_s": now - self.last_sample[0],
            "users": self.take_users(),
            "generator_cpu_s": cpu - self.last_sample[1],
            **self.stats.take_interval(),
        }
        self.last_sample = (now, cpu)
        with (self.run_dir / "timeseries.jsonl").open("a") as file:
            file.write(json.dumps(record) + "\n")

    async def sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            self.write_sample()

    async def run(self) -> None:
        plan = self.plan
        self.started = time.monotonic() + 0.5
        self.last_sample = (time.time(), cpu_seconds())
        sampler = asyncio.create_task(self.sample())
        users = [asyncio.create_task(self.visitor(index)) for index in range(plan.users)]
        users += [asyncio.create_task(self.noop_visitor()) for _ in range(plan.noop_users)]
        users += [asyncio.create_task(self.reader()) for _ in range(plan.readers)]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        everyone: asyncio.Future[Any] = asyncio.gather(*users, return_exceptions=True)
        stopped: asyncio.Future[Any] = asyncio.create_task(stop.wait())
        await asyncio.wait([everyone, stopped], timeout=plan.total_s + 1.0, return_when=asyncio.FIRST_COMPLETED)
        # Users plan no new request past the plan; in-flight deliveries may finish, then are cut.
        self.stopping = True
        await asyncio.wait([everyone], timeout=0 if stop.is_set() else STOP_TIMEOUT_S)
        for task in users:
            task.cancel()
        await asyncio.gather(*users, return_exceptions=True)
        await asyncio.sleep(0)
        sampler.cancel()
        stopped.cancel()
        self.write_sample()  # the end of the run, so it is in the time series
        final = self.stats.final()
        final["generator_cpu_s"] = cpu_seconds()
        (self.run_dir / "final.json").write_text(json.dumps(final, indent=2))
        write_acknowledged(self.run_dir / f"acknowledged-{os.getpid()}.json", self.acknowledged)
        if self.timeline is not None:
            self.timeline.flush()


def cpu_seconds() -> float:
    """This process's user + system CPU time (from /proc through os.times)."""
    times = os.times()
    return times.user + times.system


def main(argv: Iterable[str] = ()) -> None:
    plan = LoadPlan.from_env()
    # A collection that pauses this process delays every request it is timing: the fault run
    # reads these lines (locust.log) next to the server's own (services log the same way).
    logging.basicConfig(format="%(asctime)s generator %(message)s", level=logging.WARNING)
    gc.callbacks.append(GcPauseLog())
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with granian[uvloop]
        runner = asyncio.run
    runner(Engine(plan).run())


if __name__ == "__main__":
    main()
