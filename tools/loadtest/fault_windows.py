"""What each fault did to the requests around it, from the generator's per-request timeline.

A fault's window runs from the moment it was injected to the next fault's (or the end of the
hold): every request that was answered (or gave up) inside it belongs to it. A request "refused"
is one that did not get what it asked for: a retried attempt (503 or no answer) or a final failure.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tools.loadtest.faults import FaultRecord
from tools.loadtest.timeline import RequestRecord


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

    def passed(self, deadline_s: float) -> bool:
        """Never hung (the longest request within the deadline), recovered, and every 503 said when to retry."""
        return self.longest_ms <= deadline_s * 1000 and self.recovered and self.without_retry_after == 0


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
    windows = []
    for index, fault in enumerate(faults):
        end = faults[index + 1].injected_at if index + 1 < len(faults) else run_end
        inside = [record for record in records if fault.injected_at <= record.ended < end]
        windows.append(_window(fault, fault.injected_at, end, inside, delivered))
    return windows


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
