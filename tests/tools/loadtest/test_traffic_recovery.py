"""The fault report judges recovery by the traffic: rate and p95 back at the pre-fault level.

Synthetic timelines: 20 tracker requests a second before a fault held from t=50 to t=60, and
after the lift a return that is smooth, late, slow, refused, or a herd (everyone every 5 s).
"""

from __future__ import annotations

from tools.loadtest.chaos_report import fault_table, traffic_recovered, traffic_steps
from tools.loadtest.fault_windows import TrafficLevel, fault_windows, traffic_recovery
from tools.loadtest.faults import FaultRecord
from tools.loadtest.timeline import RequestRecord

EVENTS, REPLAY, READER = "POST /v1/events", "POST /v1/replay", "GET query /v1/stats"
FAULT = FaultRecord("reject-connections", "", injected_at=50.0, lifted_at=60.0, ready_at=60.5)
END = 100.0


def steady(start: float, end: float, per_s: int = 20, duration_ms: float = 10.0) -> list[RequestRecord]:
    """per_s requests a second, evenly spread (off the whole-second boundaries), on both tracker endpoints."""
    records = []
    step = 1.0 / per_s
    n = 0
    while start + n * step + step / 2 < end:
        records.append(
            RequestRecord(start + n * step + step / 2, duration_ms, (EVENTS, REPLAY)[n % 2], 202, "ok", delivery=str(n))
        )
        n += 1
    return records


def before() -> list[RequestRecord]:
    # Readers do not count: their rate and latency are not the tracker's.
    return steady(0.0, 50.0) + [RequestRecord(40.0 + n / 10, 900.0, READER, 200, "ok") for n in range(50)]


def test_traffic_that_comes_back_smoothly_three_seconds_after_the_lift_recovered_after_3_s() -> None:
    records = before() + steady(63.0, END)
    recovery = traffic_recovery(records, FAULT, END)
    assert recovery.before == TrafficLevel(requests_per_s=20.0, p95_ms=10.0, refused=0)
    # [60, 62) silent, [61, 63) silent, [62, 64) half the rate: 10/s is 50 % under; [63, 65) at the level.
    assert [level.requests_per_s for _, level in recovery.steps[:4]] == [0.0, 0.0, 10.0, 20.0]
    assert recovery.recovered_after_s == 3.0
    assert recovery.judged
    assert recovery.recovered


def test_a_herd_every_five_seconds_never_recovers_though_its_average_rate_is_right() -> None:
    # 100 requests at once every 5 s: 20 a second on average, all of them in one instant.
    herd = [
        RequestRecord(60.5 + 5 * spike + n / 1000, 10.0, EVENTS, 202, "ok") for spike in range(8) for n in range(100)
    ]
    recovery = traffic_recovery(before() + herd, FAULT, END)
    assert recovery.recovered_after_s is None
    assert not recovery.recovered
    # The windows alternate between 50 requests/s and nothing.
    assert {level.requests_per_s for _, level in recovery.steps} == {0.0, 50.0}


def test_slow_requests_or_refusals_after_the_lift_delay_the_recovery() -> None:
    slow_then_fast = steady(60.0, 68.0, duration_ms=200.0) + steady(68.0, END)
    assert traffic_recovery(before() + slow_then_fast, FAULT, END).recovered_after_s == 8.0
    # p95 within 1.5x (15 ms) or +25 ms (35 ms): 30 ms is at the level.
    assert traffic_recovery(before() + steady(60.0, END, duration_ms=30.0), FAULT, END).recovered_after_s == 0.0

    refused = [RequestRecord(64.5, 5.0, EVENTS, 503, "retried", "database_unavailable", delivery="x")]
    recovery = traffic_recovery(before() + steady(60.0, END) + refused, FAULT, END)
    # Every window holding 64.5 ([63, 65) and [64, 66)) is out; the next starts at 65.
    assert recovery.recovered_after_s == 5.0


def test_back_after_twelve_seconds_is_not_recovered_and_the_report_says_when() -> None:
    records = before() + steady(72.0, END)
    [window] = fault_windows(records, [FAULT], run_end=END)
    assert window.traffic is not None
    assert window.traffic.recovered_after_s == 12.0
    assert not window.traffic.recovered
    assert window.recovered  # every endpoint answered again: the old check alone would pass it
    assert not window.passed(deadline_s=12)
    assert traffic_recovered(window) == "**not recovered** within 10 s (12 s)"
    assert "| **not recovered** within 10 s (12 s) | FAIL |" in fault_table([window], deadline_s=12)
    assert "| 12 | 20 | 10 | 0 | yes |" in traffic_steps(window)

    [smooth] = fault_windows(before() + steady(60.0, END), [FAULT], run_end=END)
    assert smooth.passed(deadline_s=12)
    assert traffic_recovered(smooth) == "0"


def test_stability_is_asked_only_for_the_windows_before_the_next_fault() -> None:
    # The next fault comes at 68: only the windows ending by then are judged.
    recovery = traffic_recovery(before() + steady(63.0, 68.0), FAULT, window_end=68.0)
    assert [after_s for after_s, _ in recovery.steps] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert recovery.recovered_after_s == 3.0


def test_too_little_traffic_before_the_fault_is_not_judged() -> None:
    sparse = steady(0.0, 50.0, per_s=2) + steady(70.0, END, per_s=2)
    [window] = fault_windows(sparse, [FAULT], run_end=END)
    assert window.traffic is not None
    assert not window.traffic.judged
    assert window.traffic_recovered
    assert traffic_recovered(window) == "not judged (2.0 requests/s before the fault)"
