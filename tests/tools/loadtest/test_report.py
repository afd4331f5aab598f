"""The report's judgement on synthetic runs: headline from the probe, the generator's lateness and
saturation, whether the stack took the load planned."""

from __future__ import annotations

from typing import Any

import pytest

from tools.loadtest import report, stats
from tools.loadtest.check import DeliveryCheck
from tools.loadtest.runner import stack_flags, within_bounds

T0 = 1_764_000_000.0


def interval(t: float, users: int, cpu_s: float = 0.0, delay: dict[int, int] | None = None) -> dict[str, Any]:
    """One 2-s record of the engine's time series."""
    return {
        "t": T0 + t,
        "interval_s": 2.0,
        "users": users,
        "generator_cpu_s": cpu_s,
        "endpoints": {},
        "histograms": {"ingest": {}, "noop": {}, "schedule_delay": {str(k): v for k, v in (delay or {}).items()}},
    }


def test_exact_percentiles_by_hand() -> None:
    values = [float(v) for v in range(1, 21)]  # 1 .. 20
    assert report.exact_percentile(values, 0.5) == 10
    assert report.exact_percentile(values, 0.95) == 19
    assert report.exact_percentile(values, 0.99) == 20
    assert report.exact_percentile([], 0.95) == 0


def test_locust_style_buckets() -> None:
    assert [stats.bucket(v) for v in (0.4, 42.6, 123.0, 1249.0, 12_600.0)] == [0, 43, 120, 1200, 13_000]


def test_the_hold_window_is_the_intervals_at_peak_users() -> None:
    series = [interval(2, 10), interval(4, 50), interval(6, 50), interval(8, 20)]
    assert report.hold_window(series) == (T0 + 2, T0 + 6)
    assert report.hold_window([]) is None


def test_probe_figures_come_from_the_hold_only_and_count_what_was_not_a_202() -> None:
    window = (T0 + 10, T0 + 20)
    rows = [(T0 + 1, "/v1/events", 202, 900.0)]  # in the ramp: left out
    rows += [(T0 + 10 + i / 2, "/v1/events", 202, float(i + 1)) for i in range(20)]  # 1 .. 20 ms
    rows += [(T0 + 10 + i / 2, "/v1/noop", 202, 2.0) for i in range(19)]
    rows += [(T0 + 19.9, "/v1/noop", 503, 5000.0)]
    figures = report.probe_figures(rows, window)
    assert figures["probe_requests"] == 40
    assert figures["probe_failures"] == 1
    assert figures["probe_failure_ratio"] == pytest.approx(1 / 40)
    assert (figures["probe_ingest_p50"], figures["probe_ingest_p95"], figures["probe_ingest_max"]) == (10, 19, 20)
    assert figures["probe_noop_p95"] == 2  # the 503 is a failure, not a latency


def test_an_engine_on_time_and_idle_is_neither_late_nor_saturated() -> None:
    series = [interval(2, 100, 0.2, {1: 50}), interval(4, 100, 0.4, {2: 99, 30: 1}), interval(6, 0, 0.1, {0: 10})]
    final = {"schedule_delay": {"p50": 1.0, "p95": 2.0, "p99": 30.0}}
    figures = report.generator_figures(final, series, [], report.hold_window(series), requests=700)
    # CPU: 0.7 s over 700 requests; at full load 0.6 s in 4 s.
    assert figures["generator_cpu_ms_per_request"] == pytest.approx(1.0)
    assert figures["generator_cpu_share"] == pytest.approx(0.15)
    assert figures["generator_cpu_share_max"] == pytest.approx(0.2)
    assert figures["hold_schedule_delay_p95"] == 2
    assert (figures["generator_late"], figures["generator_saturated"]) == (0.0, 0.0)
    assert report.verdicts(figures) == []


def test_a_late_and_saturated_generator_is_said_in_words() -> None:
    series = [interval(2, 5000, 1.9, {80: 100}), interval(4, 5000, 1.95, {120: 100})]
    final = {"schedule_delay": {"p50": 80.0, "p95": 120.0, "p99": 120.0}}
    figures = report.generator_figures(final, series, [], report.hold_window(series), requests=1000)
    assert figures["generator_cpu_share"] == pytest.approx(0.9625)
    said = " ".join(report.verdicts(figures))
    assert "**The generator was late**" in said
    assert "120 ms" in said
    assert "**The generator was saturated**" in said
    assert "96 %" in said


def test_just_under_the_bounds_is_not_flagged() -> None:
    series = [interval(2, 10, 1.8)]  # exactly 90 % of a core
    final = {"schedule_delay": {"p50": 10.0, "p95": 50.0, "p99": 70.0}}  # p95 exactly 50 ms
    figures = report.generator_figures(final, series, [], report.hold_window(series), requests=10)
    assert report.verdicts(figures) == []


def test_locust_runs_take_cpu_from_the_monitor_and_say_the_delay_was_not_measured() -> None:
    series = [{**interval(2, 10), "histograms": {}}]
    del series[0]["generator_cpu_s"]
    monitor = [{"t": T0 + 2, "interval_s": 2.0, "cpu": {"load generator": 50.0}}]
    figures = report.generator_figures({}, series, monitor, report.hold_window(series), requests=100)
    assert figures["generator_cpu_ms_per_request"] == pytest.approx(10.0)
    assert figures["generator_cpu_share"] == pytest.approx(0.5)
    assert "schedule_delay_p95" not in figures
    assert "not measured" in report.verdicts(figures)[0]


def _figures(**changes: float) -> dict[str, float]:
    figures = {
        "failure_ratio": 0.0,
        "probe_failure_ratio": 0.0,
        "probe_requests": 100.0,
        "probe_ingest_p95": 120.0,
        "ingest_p95": 4000.0,  # the generator's own clock: shown, never judged
    }
    return {**figures, **changes}


def test_find_limit_judges_by_the_probe_and_failures_not_by_the_generators_clock() -> None:
    stored = [DeliveryCheck("events", 80, 80, 0)]
    assert within_bounds(_figures(), stored)
    assert not within_bounds(_figures(probe_ingest_p95=501.0), stored)
    assert within_bounds(_figures(probe_ingest_p95=500.0), stored)
    assert not within_bounds(_figures(failure_ratio=0.0011), stored)
    assert not within_bounds(_figures(probe_failure_ratio=0.02), stored)
    assert not within_bounds(_figures(probe_requests=0.0), stored)  # nothing measured is not good
    assert not within_bounds(_figures(), [DeliveryCheck("events", 80, 79, 0)])


def test_late_but_idle_means_the_machine_had_no_cpu_for_the_generator() -> None:
    series = [interval(2, 5000, 0.4, {200: 100})]
    final = {"schedule_delay": {"p50": 200.0, "p95": 200.0, "p99": 200.0}}
    figures = report.generator_figures(final, series, [], report.hold_window(series), requests=1000)
    [said] = report.verdicts(figures)
    assert "**The generator was late**" in said
    assert "It used only 20 % of its core" in said


def at_peak(t: float, endpoints: dict[str, int]) -> dict[str, Any]:
    """One 2-s record at full load (100 users) with these requests per endpoint."""
    return {**interval(t, 100), "endpoints": {name: {"requests": count} for name, count in endpoints.items()}}


def test_deliveries_at_full_load_count_first_attempts_of_posts_and_the_share_sent_again() -> None:
    counts = {"POST /v1/events": 100, "POST /v1/events (retried)": 25, "POST /v1/noop": 20, "GET query /v1/goals": 5}
    series = [interval(0, 50), at_peak(2, counts), at_peak(4, counts)]
    figures = report.hold_figures(series)
    # 2 x 120 first attempts in 4 s; 2 x 25 sent again of 2 x 145 attempts; the reader's GETs are neither.
    assert figures["hold_deliveries_rps"] == pytest.approx(60.0)
    assert figures["hold_retried_share"] == pytest.approx(50 / 290)
    assert figures["hold_rps"] == pytest.approx(2 * 150 / 4)


def test_a_stack_that_did_not_take_the_planned_load_on_a_saturated_machine_is_said_in_words() -> None:
    figures = {
        "planned_rps": 1050.0,
        "hold_deliveries_rps": 603.0,
        "hold_retried_share": 0.134,
        "hold_machine_cpu_share": 0.99,
        "probe_ingest_p95": 5146.0,
        "probe_noop_p95": 5240.0,
    }
    assert report.stack_shortfalls(figures) == pytest.approx(
        {"behind": 603 / 1050, "turned_away": 0.134, "saturated": 0.99}
    )
    said = report.stack_verdicts(figures)
    assert len(said) == 3
    assert "**The stack did not keep up with the planned load**" in said[0]
    assert "603 deliveries a second against the 1050 planned (57 %)" in said[0]
    assert "**13 % of the attempts at full load were turned away**" in said[1]
    assert "**The machine was saturated**: 99 % of its cores" in said[2]
    assert "the machine's queue, not ingest's own work" in said[2]  # ingest p95 1.0x the no-op's
    # Saturated while ingest is three times slower than the no-op: the queue is not all it measured.
    [slow] = report.stack_verdicts({**figures, "planned_rps": 0.0, "hold_retried_share": 0.0, "probe_noop_p95": 1700.0})
    assert "99 % of its cores" in slow
    assert "queue" not in slow


def test_a_stack_that_kept_up_with_room_to_spare_is_not_flagged() -> None:
    # At the bounds: 90 % of the planned deliveries, 1 % sent again, 90 % of the cores busy.
    figures = {"planned_rps": 1000.0, "hold_deliveries_rps": 900.0, "hold_retried_share": 0.01}
    assert report.stack_verdicts({**figures, "hold_machine_cpu_share": 0.9}) == []
    # Without the full-load figures (no hold, no monitor) nothing is claimed either way.
    assert report.stack_verdicts({"planned_rps": 1000.0}) == []


def test_the_runs_last_line_names_what_the_stack_did_not_take() -> None:
    figures = {"planned_rps": 1000.0, "hold_deliveries_rps": 570.0, "hold_retried_share": 0.13}
    assert (
        stack_flags(figures)
        == " (AT FULL LOAD: THE STACK TOOK 57 % OF THE PLANNED DELIVERIES; 13 % OF ATTEMPTS TURNED AWAY)"
    )
    assert stack_flags({"planned_rps": 1000.0, "hold_deliveries_rps": 1000.0}) == ""


def test_the_cpu_table_names_the_stack_processes_no_sample_found() -> None:
    # ingest restarted mid-run (missing from one sample) was measured; query and replay never were.
    monitor = [
        {"t": T0 + 2, "machine_cpu": 50.0, "cpu": {"ingest": 40.0, "postgres": 20.0, "pgbouncer": 1.0}},
        {"t": T0 + 4, "machine_cpu": 50.0, "cpu": {"postgres": 30.0, "pgbouncer": 2.0, "load generator": 45.0}},
    ]
    assert report.unmeasured_stack_processes(monitor) == ["query", "replay"]
    table = report.cpu_table(monitor)
    assert "| postgres | 25 | 30 |" in table
    assert "**Not measured: query, replay.**" in table
    everything = {name: 1.0 for name in ("ingest", "query", "replay", "pgbouncer", "postgres")}
    assert "Not measured" not in report.cpu_table([{"t": T0 + 2, "cpu": everything}])
    assert "Not measured" not in report.cpu_table([{"t": T0 + 2, "interval_s": 2.0}])  # no CPU sampled at all
