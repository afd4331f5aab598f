"""What each fault did to the requests around it, from the generator's per-request timeline.

A fault's window runs from the moment it was injected to the next fault's (or the end of the
hold): every request that was answered (or gave up) inside it belongs to it. A request "refused"
is one that did not get what it asked for: a retried attempt (503 or no answer) or a final failure.

Recovery is judged by the traffic itself, not by /health/ready: after a 10 s outage the
services were ready half a second after the lift while every visitor's retry came back at once
and the load went on in spikes. The tracker endpoints' requests are cut in 1-s steps from the
lift; the traffic has recovered at the first step from which every 2-s window over the next
RECOVERY_STABLE_S holds the pre-fault level (TrafficLevel.holds): its request rate within
RATE_TOLERANCE of the rate in the PRE_FAULT_S before the injection, its p95 within
P95_TOLERANCE of that p95, nothing refused. It must do so within RECOVERY_LIMIT_S of the lift.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tools.loadtest.faults import FaultRecord
from tools.loadtest.timeline import RequestRecord

# What the visitors send (a tracker's traffic); readers and no-op users are not judged.
TRACKER_ENDPOINTS = ("POST /v1/events", "POST /v1/replay", "POST /v1/replay (first chunk)")
PRE_FAULT_S = 10.0
# Shorter than a visitor's sending period (5 s), so a herd that comes back every 5 s shows as
# windows above and below the level; long enough to hold ~100 requests at a few hundred visitors.
LEVEL_WINDOW_S = 2.0
LEVEL_STEP_S = 1.0
RECOVERY_STABLE_S = 10.0
RECOVERY_LIMIT_S = 10.0
RATE_TOLERANCE = 0.25
# p95 back within 1.5x of the pre-fault p95, or 25 ms above it (a p95 of 10 ms is noise-bound).
P95_TOLERANCE = 1.5
P95_SLACK_MS = 25.0
# Below this rate before the fault a window holds too few requests for a rate to mean
# anything (a 12-visitor test run): the traffic is then not judged, and says so.
MIN_JUDGED_REQUESTS_PER_S = 10.0


@dataclass(frozen=True)
class TrafficLevel:
    """The tracker traffic of a stretch of time: requests started per second, their p95, refusals."""

    requests_per_s: float
    p95_ms: float
    refused: int = 0

    def holds(self, before: TrafficLevel) -> bool:
        """Back at the pre-fault level: the rate within RATE_TOLERANCE, the p95 within P95_TOLERANCE, no refusal."""
        if before.requests_per_s <= 0:
            return self.refused == 0
        rate_ok = abs(self.requests_per_s / before.requests_per_s - 1.0) <= RATE_TOLERANCE
        p95_ok = self.p95_ms <= max(before.p95_ms * P95_TOLERANCE, before.p95_ms + P95_SLACK_MS)
        return rate_ok and p95_ok and self.refused == 0


@dataclass(frozen=True)
class TrafficRecovery:
    before: TrafficLevel
    # Seconds from the lift until the traffic was back at the pre-fault level for good
    # (RECOVERY_STABLE_S); None: not within the window.
    recovered_after_s: float | None
    # Each LEVEL_STEP_S from the lift: (seconds after the lift, the window starting there).
    steps: list[tuple[float, TrafficLevel]] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        return self.before.requests_per_s >= MIN_JUDGED_REQUESTS_PER_S

    @property
    def recovered(self) -> bool:
        return self.recovered_after_s is not None and self.recovered_after_s <= RECOVERY_LIMIT_S


@dataclass(frozen=True)
class EndpointWindow:
    endpoint: str
    requests: int
    refused: int
    # From the start of the first refused request to the end of the last one; 0 if none.
    unavailable_s: float
    # Seconds from the fault's lift to the end of the last refused request (0 if it came before).
    recovery_s: float
    # An answer that was not refused came after the last refused one.
    recovered: bool


@dataclass(frozen=True)
class FaultWindow:
    fault: FaultRecord
    window_start: float
    window_end: float
    requests: int
    endpoints: list[EndpointWindow]
    # Retried attempts (503 or no answer) whose delivery got its 202 later.
    retried_then_delivered: Counter[str] = field(default_factory=Counter)
    # Retried attempts of deliveries that never got a 202 (given up, or the run ended first).
    retried_never_delivered: Counter[str] = field(default_factory=Counter)
    # Final failures: deliveries given up, readers' errors.
    final_failures: Counter[str] = field(default_factory=Counter)
    # 503 answers that carried no Retry-After (the tracker would not know when to come back).
    without_retry_after: int = 0
    p95_ms: float = 0.0
    longest_ms: float = 0.0
    longest_request: str = ""
    traffic: TrafficRecovery | None = None

    @property
    def unavailable_s(self) -> float:
        return max((endpoint.unavailable_s for endpoint in self.endpoints), default=0.0)

    @property
    def recovery_s(self) -> float:
        return max((endpoint.recovery_s for endpoint in self.endpoints), default=0.0)

    @property
    def recovered(self) -> bool:
        return self.fault.ready_at is not None and all(endpoint.recovered for endpoint in self.endpoints)

    @property
    def ready_after_s(self) -> float | None:
        return None if self.fault.ready_at is None else self.fault.ready_at - self.fault.lifted_at

    @property
    def traffic_recovered(self) -> bool:
        """The traffic was back within RECOVERY_LIMIT_S, or there was too little of it to judge."""
        return self.traffic is None or not self.traffic.judged or self.traffic.recovered

    def passed(self, deadline_s: float) -> bool:
        """Never hung (the longest request within the deadline), recovered (every endpoint answered
        again, and the tracker traffic back at its pre-fault rate and p95 within RECOVERY_LIMIT_S),
        and every 503 said when to retry."""
        return (
            self.longest_ms <= deadline_s * 1000
            and self.recovered
            and self.traffic_recovered
            and self.without_retry_after == 0
        )


def failure_label(record: RequestRecord) -> str:
    if record.status == 0:
        return f"no answer ({record.error})" if record.error else "no answer"
    return f"HTTP {record.status} {record.error}".strip()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def delivered_ids(records: Sequence[RequestRecord]) -> set[str]:
    return {record.delivery for record in records if record.delivery is not None and record.outcome == "ok"}


def fault_windows(records: Sequence[RequestRecord], faults: Sequence[FaultRecord], run_end: float) -> list[FaultWindow]:
    delivered = delivered_ids(records)
    tracker = tracker_requests(records)  # once, not per fault
    windows = []
    for index, fault in enumerate(faults):
        end = faults[index + 1].injected_at if index + 1 < len(faults) else run_end
        inside = [record for record in records if fault.injected_at <= record.ended < end]
        window = _window(fault, fault.injected_at, end, inside, delivered)
        windows.append(replace(window, traffic=traffic_recovery(tracker, fault, end)))
    return windows


def tracker_requests(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """The tracker endpoints' requests, in the order they started."""
    return sorted(
        (record for record in records if record.endpoint in TRACKER_ENDPOINTS), key=lambda record: record.started
    )


def traffic_level(records: Sequence[RequestRecord], start: float, end: float) -> TrafficLevel:
    """The requests (sorted by start) that started in [start, end): their rate, p95 and refusals."""
    first = bisect.bisect_left(records, start, key=lambda record: record.started)
    last = bisect.bisect_left(records, end, key=lambda record: record.started)
    inside = records[first:last]
    return TrafficLevel(
        requests_per_s=len(inside) / (end - start) if end > start else 0.0,
        p95_ms=percentile([record.duration_ms for record in inside], 0.95),
        refused=sum(1 for record in inside if record.outcome != "ok"),
    )


def traffic_recovery(records: Sequence[RequestRecord], fault: FaultRecord, window_end: float) -> TrafficRecovery:
    """When, after the lift, the tracker traffic was back at its pre-fault level to stay (module docstring).

    Only windows that end before window_end (the next fault) are judged; near the end the
    stability asked for shrinks to the windows that fit.
    """
    records = tracker_requests(records)
    before = traffic_level(records, fault.injected_at - PRE_FAULT_S, fault.injected_at)
    steps: list[tuple[float, TrafficLevel]] = []
    offset = 0.0
    while fault.lifted_at + offset + LEVEL_WINDOW_S <= window_end:
        start = fault.lifted_at + offset
        steps.append((offset, traffic_level(records, start, start + LEVEL_WINDOW_S)))
        offset += LEVEL_STEP_S
    stable_steps = round(RECOVERY_STABLE_S / LEVEL_STEP_S) - round(LEVEL_WINDOW_S / LEVEL_STEP_S) + 1
    for index, (after_s, _) in enumerate(steps):
        following = steps[index : index + stable_steps]
        if all(level.holds(before) for _, level in following):
            return TrafficRecovery(before, after_s, steps)
    return TrafficRecovery(before, None, steps)


def _window(
    fault: FaultRecord, start: float, end: float, inside: list[RequestRecord], delivered: set[str]
) -> FaultWindow:
    by_endpoint: dict[str, list[RequestRecord]] = {}
    for record in inside:
        by_endpoint.setdefault(record.endpoint, []).append(record)
    endpoints = []
    for name in sorted(by_endpoint):
        records = by_endpoint[name]
        refused = [record for record in records if record.outcome != "ok"]
        if not refused:
            endpoints.append(EndpointWindow(name, len(records), 0, 0.0, 0.0, True))
            continue
        last_refused_end = max(record.ended for record in refused)
        endpoints.append(
            EndpointWindow(
                endpoint=name,
                requests=len(records),
                refused=len(refused),
                unavailable_s=last_refused_end - min(record.started for record in refused),
                recovery_s=max(0.0, last_refused_end - fault.lifted_at),
                recovered=any(record.outcome == "ok" and record.ended > last_refused_end for record in records),
            )
        )
    retried_then_delivered: Counter[str] = Counter()
    retried_never_delivered: Counter[str] = Counter()
    final_failures: Counter[str] = Counter()
    for record in inside:
        if record.outcome == "retried":
            target = retried_then_delivered if record.delivery in delivered else retried_never_delivered
            target[failure_label(record)] += 1
        elif record.outcome == "failed":
            final_failures[f"{record.endpoint}: {failure_label(record)}"] += 1
    longest = max(inside, key=lambda record: record.duration_ms, default=None)
    return FaultWindow(
        fault=fault,
        window_start=start,
        window_end=end,
        requests=len(inside),
        endpoints=endpoints,
        retried_then_delivered=retried_then_delivered,
        retried_never_delivered=retried_never_delivered,
        final_failures=final_failures,
        without_retry_after=sum(1 for record in inside if record.status == 503 and "no Retry-After" in record.error),
        p95_ms=percentile([record.duration_ms for record in inside], 0.95),
        longest_ms=longest.duration_ms if longest else 0.0,
        longest_request=f"{longest.endpoint} ({failure_label(longest)})" if longest else "",
    )
