"""The seed's k6 test as a Locust scenario: `sightline load` runs it; see docs/load-testing.md.

Visitors post what a tracker posts every 5 seconds: first a 15-60 kB gzip replay chunk with the
page's full rrweb snapshot (the first chunk of a session recorded in Chromium), then event batches
and incremental replay chunks alternately.
Readers poll what a dashboard or replay viewer would, and a few users post to the no-op endpoint
so a run states ingest's latency next to the bare HTTP path's under the same load.

The plan comes from SIGHTLINE_LOAD_* variables (tools.loadtest.plan). Statistics for the
report are written by the master (or the only) process every SAMPLE_S seconds; every process
writes how many events and replay chunks a 202 acknowledged, to compare with what was stored.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, between, events, runners, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from tools.loadtest import payloads, stats
from tools.loadtest.check import Acknowledged, write_acknowledged
from tools.loadtest.hosts import require_loopback
from tools.loadtest.plan import PAYLOADS_FILE, LoadPlan
from tools.loadtest.readers import readable_endpoints
from tools.loadtest.timeline import RequestRecord, TimelineWriter

PLAN = LoadPlan.from_env()
SAMPLE_S = 2.0
# Workers report to the master every 3 s by default; every second keeps the time series smooth.
runners.WORKER_REPORT_INTERVAL = 1.0
# With --processes on a 2-core machine that also runs the whole stack, a starved worker can miss
# Locust's default 3 heartbeats; the master then hands its users to the others while it keeps
# running them (seen here: 151 users for a plan of 106). Ten seconds tolerates that.
runners.HEARTBEAT_LIVENESS = 10

# As the tracker (tracker/src/transport.js): it gives up on a batch after this many attempts (the
# last refusal is a failure); without Retry-After it backs off 1 s, 2 s, 4 s ... up to 60 s, with jitter.
MAX_ATTEMPTS = 8
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
MAX_RETRY_AFTER_S = 30.0
RETRIED_SUFFIX = " (retried)"

FIRST_CHUNK = "POST /v1/replay (first chunk)"
TRACKER_ENDPOINTS = (FIRST_CHUNK, "POST /v1/replay", "POST /v1/events")
NOOP_ENDPOINT = "POST /v1/noop"

_pools: payloads.PayloadPools | None = None


def pools() -> payloads.PayloadPools:
    """Built once by `sightline load` before Locust starts, so no generator process spends the run's CPU on it."""
    global _pools
    if _pools is None:
        prepared = Path(PLAN.run_dir) / PAYLOADS_FILE
        _pools = payloads.load_pools(prepared) if prepared.exists() else payloads.build_pools(PLAN.project_key)
    return _pools


ACKNOWLEDGED = Acknowledged()
# The fault run's per-request and per-row record (plan.record_timeline); None otherwise.
TIMELINE = TimelineWriter(Path(PLAN.run_dir)) if PLAN.record_timeline else None
_DELIVERY_NUMBERS = itertools.count(1)


def _error_code(response: Any) -> str:
    if response.status_code == 0:
        return f"network error: {type(response.error).__name__}"
    try:
        code = json.loads(response.content or b"{}").get("error", {}).get("code", "")
    except (ValueError, AttributeError):
        code = ""
    return f"HTTP {response.status_code} {code}".strip()


def _retry_after_s(response: Any, failed_attempts: int) -> float:
    """Retry-After (capped) plus up to half again, as the tracker; else its exponential backoff with jitter."""
    header = response.headers.get("retry-after") if response.status_code else None
    if header:
        try:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(header))) * (1 + random.random() / 2)
        except ValueError:
            pass
    backoff = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** (failed_attempts - 1))
    return backoff / 2 + random.random() * backoff / 2


def paced_with_random_phase(pacing_s: float) -> Callable[[Any], float]:
    """One task start every pacing_s, like constant_pacing, but shifted by a random phase.

    Locust starts fixed-count users first and almost at once; paced exactly, they would post in
    a burst every 5 s and the no-op baseline would measure the burst, not the load. (A sleep in
    the task, or constant_pacing plus a random wait, is compensated back into the same phase by
    constant_pacing; a sleep in on_start made Locust's worker processes miss heartbeats.)
    """

    def wait_time(user: Any) -> float:
        now = time.monotonic()
        previous: float | None = getattr(user, "next_task_at", None)
        # Late (a slow task): start now rather than try to catch up with a burst.
        next_task_at = now + random.uniform(0, pacing_s) if previous is None else max(now, previous + pacing_s)
        user.next_task_at = next_task_at
        return next_task_at - now

    return wait_time


def on_own_interval(pacing_s: float, most_behind: int = 6) -> Callable[[Any], float]:
    """One task per pacing_s on the user's own random phase, as the tracker's setInterval fills its queue.

    A task that ran long (a delivery retried through an outage) is followed by the ones its
    intervals missed, back to back (the tracker's queue sends one at a time), then the user is on
    its own phase again. constant_pacing restarts every user's period when its long task ends, so
    visitors refused together stayed in step for the rest of a fault run (spikes every 5 s after
    an outage, nothing between). At most most_behind intervals are caught up.
    """

    def wait_time(user: Any) -> float:
        now = time.monotonic()
        previous: float | None = getattr(user, "next_task_at", None)
        if previous is None:
            next_task_at = now + random.uniform(0, pacing_s)
        else:
            next_task_at = previous + pacing_s
            oldest = now - most_behind * pacing_s
            if next_task_at < oldest:
                next_task_at += math.ceil((oldest - next_task_at) / pacing_s) * pacing_s
        user.next_task_at = next_task_at
        return max(0.0, next_task_at - now)

    return wait_time


class _Sender(FastHttpUser):
    """Posts a body until a 202, retrying 503s and network errors with the same body as a tracker does."""

    abstract = True
    network_timeout = 60.0
    connection_timeout = 10.0
    # Retries are ours (same body, Retry-After honoured), not the HTTP client's.
    max_retries = 0
    concurrency = 1

    def deliver(self, path: str, name: str, body: bytes, headers: dict[str, str]) -> bool:
        delivery = f"{os.getpid()}-{next(_DELIVERY_NUMBERS)}"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            wait_s = 0.0
            # Locust's annotation says str, but the body goes to geventhttpclient as is: bytes are fine.
            with self.client.post(
                path,
                data=body,  # type: ignore[arg-type]
                headers=headers,
                name=name,
                catch_response=True,
                context={"delivery": delivery},
            ) as response:
                if response.status_code == 202:
                    response.success()
                    return True
                retryable = response.status_code in (0, 503)
                if retryable and attempt < MAX_ATTEMPTS:
                    # Recorded under its own name so that a retried attempt is neither a failure
                    # nor mixed into the endpoint's latency; the report counts them.
                    response.request_meta["name"] = name + RETRIED_SUFFIX
                    response.success()
                    ACKNOWLEDGED.retried_attempts += 1
                    wait_s = _retry_after_s(response, attempt)
                else:
                    response.failure(_error_code(response))
                    return False
            gevent.sleep(wait_s)
        return False


class Visitor(_Sender):
    """One browser tab with the tracker: a request every 5 s, first the full snapshot."""

    wait_time = on_own_interval(PLAN.pacing_s)

    def on_start(self) -> None:
        self.visitor = payloads.VisitorIdentity(PLAN.project_key)
        self.seq = 0
        self.variant = random.randrange(1 << 16)
        self.headers = {
            "content-type": "application/json",
            "content-encoding": "gzip",
            "user-agent": random.choice(payloads.USER_AGENTS),
            "origin": "https://example.com",
        }

    @task
    def send_next_batch(self) -> None:
        if PLAN.noop_only:  # the generator measured against the no-op app alone
            body = payloads.noop_body(pools(), self.visitor, self.variant)
            self.deliver("/v1/noop", NOOP_ENDPOINT, body, self.headers)
            return
        request = payloads.tracker_request(pools(), self.visitor, self.seq, self.variant)
        name = FIRST_CHUNK if self.seq == 0 else f"POST {request.path}"
        self.seq += 1
        ACKNOWLEDGED.deliveries += 1
        delivered: bool | None = None
        try:
            delivered = self.deliver(request.path, name, request.body, self.headers)
        finally:
            # None: the run's end stopped this user mid-delivery (GreenletExit); the server
            # may have committed rows the client never heard back about.
            if delivered is None:
                ACKNOWLEDGED.interrupted_deliveries += 1
                ACKNOWLEDGED.events_in_interrupted_deliveries += request.events
                ACKNOWLEDGED.replay_chunks_in_interrupted_deliveries += request.replay_chunks
                if TIMELINE is not None:
                    TIMELINE.rows("doubt", request.event_uuids, request.chunk_key)
        if delivered:
            ACKNOWLEDGED.events += request.events
            ACKNOWLEDGED.replay_chunks += request.replay_chunks
        else:
            ACKNOWLEDGED.failed_deliveries += 1
            ACKNOWLEDGED.events_in_failed_deliveries += request.events
            ACKNOWLEDGED.replay_chunks_in_failed_deliveries += request.replay_chunks
        if TIMELINE is not None:
            TIMELINE.rows("ack" if delivered else "doubt", request.event_uuids, request.chunk_key)


class NoopVisitor(_Sender):
    """Posts an events-sized gzip body to the no-op endpoint at the visitors' pace."""

    wait_time = paced_with_random_phase(PLAN.pacing_s)
    fixed_count = PLAN.noop_users

    def on_start(self) -> None:
        self.visitor = payloads.VisitorIdentity(PLAN.project_key)
        self.variant = random.randrange(1 << 16)
        self.headers = {
            "content-type": "application/json",
            "content-encoding": "gzip",
            "user-agent": random.choice(payloads.USER_AGENTS),
        }

    @task
    def send_noop(self) -> None:
        self.deliver("/v1/noop", NOOP_ENDPOINT, payloads.noop_body(pools(), self.visitor, self.variant), self.headers)


class Reader(FastHttpUser):
    """A dashboard or replay viewer: readiness, plus whatever read endpoints the services publish.

    Query and replay endpoints are built on other branches; only paths a service lists in its
    OpenAPI document are called, so a missing endpoint is skipped rather than counted as a 404.
    """

    wait_time = between(5, 15)
    fixed_count = PLAN.readers
    network_timeout = 60.0
    concurrency = 1

    def on_start(self) -> None:
        self.authorization = {"authorization": f"Bearer {PLAN.secret_key}"}
        self.calls: list[tuple[str, str, str, bytes | None]] = []
        for service, base in (("query", PLAN.query_url), ("replay", PLAN.replay_url)):
            self.calls.append(("GET", f"{require_loopback(base)}/health/ready", f"GET {service} /health/ready", None))
            with self.client.get(
                f"{base}/schema/openapi.json", name=f"GET {service} /schema/openapi.json", catch_response=True
            ) as response:
                if response.status_code != 200:
                    response.failure(_error_code(response))
                    continue
                document = json.loads(response.content or b"{}")
            self.calls += readable_endpoints(service, base, document)

    @task
    def read_dashboard(self) -> None:
        for method, url, name, body in self.calls:
            headers = {**self.authorization, "content-type": "application/json"} if body else self.authorization
            self.client.request(method, url, name=name, data=body, headers=headers)  # type: ignore[arg-type]


class RampShape(LoadTestShape):
    """Up to the plan's users (linearly or in steps), hold, down to zero, then stop by itself."""

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        extras = PLAN.readers + PLAN.noop_users
        if elapsed < PLAN.ramp_up_s + PLAN.hold_s:
            if PLAN.shape == "steps":
                step = min(PLAN.steps, int(elapsed / max(PLAN.ramp_up_s, 1e-9) * PLAN.steps) + 1)
                visitors = math.ceil(PLAN.users * step / PLAN.steps)
                # Each step is reached in a fifth of its time, then held until the next.
                step_s = max(1.0, PLAN.ramp_up_s / PLAN.steps)
                return visitors + extras, max(1.0, PLAN.users / PLAN.steps / max(1.0, step_s / 5))
            return PLAN.locust_users, max(1.0, PLAN.locust_users / max(PLAN.ramp_up_s, 1.0))
        if elapsed < PLAN.total_s or (self.runner is not None and self.runner.user_count > 0):
            if elapsed > PLAN.total_s + 60:
                return None  # users that never stop must not keep the run going
            return 0, max(1.0, PLAN.locust_users / max(PLAN.ramp_down_s, 1.0))
        return None


@events.init.add_listener
def _check_and_prepare(environment: Environment, **_: Any) -> None:
    if environment.host:
        require_loopback(environment.host)
    if not isinstance(environment.runner, MasterRunner):
        pools()  # before the first user starts, not during the ramp
    if not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_sample_stats, environment)


@events.request.add_listener
def _record_request(
    name: str,
    response_time: float,
    start_time: float,
    response: Any = None,
    context: dict[str, Any] | None = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    if TIMELINE is None:
        return
    retried = name.endswith(RETRIED_SUFFIX)
    status = int(getattr(response, "status_code", 0) or 0)
    # The service's error code for an HTTP refusal (database_unavailable, commit_timeout, ...),
    # the connection error for no answer.
    error = ""
    if status == 0:
        failure = getattr(response, "error", None) or exception
        error = type(failure).__name__ if failure is not None else ""
    elif status >= 300:
        error = _error_code(response).removeprefix(f"HTTP {status}").strip()
    if status == 503 and not response.headers.get("retry-after"):
        error = (error + "; " if error else "") + "no Retry-After"
    TIMELINE.request(
        RequestRecord(
            started=start_time,
            duration_ms=response_time,
            endpoint=name.removesuffix(RETRIED_SUFFIX),
            status=status,
            outcome="retried" if retried else "failed" if exception is not None else "ok",
            error=error,
            delivery=(context or {}).get("delivery"),
        )
    )


@events.test_stop.add_listener
def _write_acknowledged_on_stop(environment: Environment, **_: Any) -> None:
    _write_acknowledged()


@events.quitting.add_listener
def _write_on_quit(environment: Environment, **_: Any) -> None:
    _write_acknowledged()
    if not isinstance(environment.runner, WorkerRunner):
        _write_final_stats(environment)


def _write_acknowledged() -> None:
    write_acknowledged(Path(PLAN.run_dir) / f"acknowledged-{os.getpid()}.json", ACKNOWLEDGED)
    if TIMELINE is not None:
        TIMELINE.flush()


def _entries(environment: Environment) -> dict[str, Any]:
    assert environment.runner is not None
    return {entry.name: entry for entry in environment.runner.stats.entries.values()}


def _sample_stats(environment: Environment) -> None:
    """Every SAMPLE_S: users, and per endpoint the requests, failures and percentiles of that interval."""
    previous: dict[str, tuple[int, int, dict[int, int]]] = {}
    output = Path(PLAN.run_dir) / "timeseries.jsonl"
    started = previous_time = time.time()
    while True:
        gevent.sleep(SAMPLE_S)
        runner = environment.runner
        if runner is None:
            continue
        now = time.time()
        record: dict[str, Any] = {
            "t": now,
            "elapsed": now - started,
            "interval_s": now - previous_time,
            "users": runner.user_count,
        }
        previous_time = now
        endpoints: dict[str, Any] = {}
        intervals: dict[str, dict[int, int]] = {}
        for name, entry in _entries(environment).items():
            histogram = dict(entry.response_times)
            requests_before, failures_before, histogram_before = previous.get(name, (0, 0, {}))
            intervals[name] = stats.difference(histogram, histogram_before)
            endpoints[name] = {
                "requests": entry.num_requests - requests_before,
                "failures": entry.num_failures - failures_before,
                **stats.summary(intervals[name]),
            }
            previous[name] = (entry.num_requests, entry.num_failures, histogram)
        tracker = stats.merge(intervals.get(name, {}) for name in TRACKER_ENDPOINTS)
        record["endpoints"] = endpoints
        record["tracker"] = {
            "requests": sum(endpoints.get(name, {}).get("requests", 0) for name in TRACKER_ENDPOINTS),
            "failures": sum(endpoints.get(name, {}).get("failures", 0) for name in TRACKER_ENDPOINTS),
            **stats.summary(tracker),
        }
        # The interval histograms themselves, so the report can give percentiles of the hold alone.
        record["histograms"] = {"ingest": tracker, "noop": intervals.get(NOOP_ENDPOINT, {})}
        record["errors"] = {f"{error.name}: {error.error}": error.occurrences for error in runner.stats.errors.values()}
        with output.open("a") as file:
            file.write(json.dumps(record) + "\n")


def _write_final_stats(environment: Environment) -> None:
    assert environment.runner is not None
    total = environment.runner.stats.total
    duration = max(1e-9, (total.last_request_timestamp or time.time()) - total.start_time)
    endpoints = {}
    for name, entry in _entries(environment).items():
        endpoints[name] = {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "avg": entry.avg_response_time,
            "max": entry.max_response_time,
            "rps": entry.num_requests / duration,
            **stats.summary(entry.response_times),
        }
    tracker = stats.merge(
        entry.response_times for name, entry in _entries(environment).items() if name in TRACKER_ENDPOINTS
    )
    final = {
        "duration_s": duration,
        "endpoints": endpoints,
        "tracker": {
            "requests": sum(endpoints.get(name, {}).get("requests", 0) for name in TRACKER_ENDPOINTS),
            "failures": sum(endpoints.get(name, {}).get("failures", 0) for name in TRACKER_ENDPOINTS),
            **stats.summary(tracker),
        },
        "errors": [
            {"name": error.name, "error": str(error.error), "occurrences": error.occurrences}
            for error in environment.runner.stats.errors.values()
        ],
    }
    (Path(PLAN.run_dir) / "final.json").write_text(json.dumps(final, indent=2))
