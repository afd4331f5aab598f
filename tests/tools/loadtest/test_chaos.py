"""The fault run: its accounting on a timeline computed by hand, and one short real fault under load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.loadtest.chaos import ChaosOptions, compare_rows, run_chaos
from tools.loadtest.fault_windows import fault_windows
from tools.loadtest.faults import FaultRecord
from tools.loadtest.timeline import RequestRecord, TimelineWriter, read_requests, read_rows

EVENTS, REPLAY, READY = "POST /v1/events", "POST /v1/replay", "GET query /health/ready"


def _synthetic_timeline() -> list[RequestRecord]:
    return [
        RequestRecord(99.0, 50, EVENTS, 202, "ok", delivery="d0"),  # before the first fault
        RequestRecord(100.2, 10, READY, 503, "failed", "database_unavailable"),
        RequestRecord(100.5, 10, EVENTS, 503, "retried", "database_unavailable", delivery="d1"),
        RequestRecord(101.0, 5, EVENTS, 0, "retried", "ConnectionRefusedError", delivery="d2"),
        RequestRecord(101.5, 2000, REPLAY, 503, "retried", "commit_timeout", delivery="d3"),
        RequestRecord(102.6, 20, EVENTS, 202, "ok", delivery="d1"),
        RequestRecord(103.0, 5, EVENTS, 503, "failed", "database_unavailable", delivery="d2"),
        RequestRecord(104.0, 30, READY, 200, "ok"),
        RequestRecord(104.0, 40, EVENTS, 202, "ok", delivery="d4"),
        RequestRecord(105.0, 60, REPLAY, 202, "ok", delivery="d3"),
        # Second fault: a 503 without Retry-After, and the endpoint never answers again.
        RequestRecord(111.0, 10, REPLAY, 202, "ok", delivery="d5"),
        RequestRecord(111.0, 100, EVENTS, 503, "retried", "shutting_down; no Retry-After", delivery="d6"),
    ]


def test_fault_windows_count_refusals_unavailability_and_recovery_per_endpoint() -> None:
    faults = [
        FaultRecord("pgbouncer-restart", "", injected_at=100.0, lifted_at=102.0, ready_at=103.0),
        FaultRecord("postgres-restart", "", injected_at=110.0, lifted_at=110.5, ready_at=None),
    ]
    first, second = fault_windows(_synthetic_timeline(), faults, run_end=120.0)

    assert (first.window_start, first.window_end, first.requests) == (100.0, 110.0, 9)
    endpoints = {endpoint.endpoint: endpoint for endpoint in first.endpoints}
    # events: refused from 100.5 (start of the first refusal) to 103.005 (end of the last).
    assert endpoints[EVENTS].refused == 3
    assert endpoints[EVENTS].unavailable_s == pytest.approx(2.505)
    assert endpoints[EVENTS].recovery_s == pytest.approx(1.005)
    assert endpoints[REPLAY].unavailable_s == pytest.approx(2.0)  # one 2-s refusal
    assert endpoints[REPLAY].recovery_s == pytest.approx(1.5)
    assert endpoints[READY].recovery_s == 0.0  # its refusal ended before the lift
    assert all(endpoint.recovered for endpoint in first.endpoints)
    assert first.unavailable_s == pytest.approx(2.505)
    assert first.recovery_s == pytest.approx(1.5)
    assert first.ready_after_s == pytest.approx(1.0)
    # d1 and d3 were delivered after their 503s; d2 never was.
    assert dict(first.retried_then_delivered) == {"HTTP 503 database_unavailable": 1, "HTTP 503 commit_timeout": 1}
    assert dict(first.retried_never_delivered) == {"no answer (ConnectionRefusedError)": 1}
    assert dict(first.final_failures) == {
        f"{EVENTS}: HTTP 503 database_unavailable": 1,
        f"{READY}: HTTP 503 database_unavailable": 1,
    }
    assert (first.longest_ms, first.longest_request) == (2000, f"{REPLAY} (HTTP 503 commit_timeout)")
    assert first.p95_ms == 2000  # nearest rank: the 9th of 9
    assert first.without_retry_after == 0
    assert first.passed(deadline_s=12)
    assert not first.passed(deadline_s=1.5)  # the 2-s request broke a 1.5-s deadline

    assert second.requests == 2
    assert second.without_retry_after == 1
    assert not second.recovered  # no ready answer, and events never answered again
    assert not second.passed(deadline_s=12)


def test_rows_are_compared_by_key_lost_duplicates_and_doubtful() -> None:
    check = compare_rows(
        "events",
        acknowledged={"a", "b", "c"},
        doubtful={"d", "e"},
        stored={"a": 1, "b": 2, "d": 1, "x": 1},
    )
    assert (check.acknowledged, check.stored, check.lost, check.duplicates) == (3, 5, 1, 1)
    assert (check.stored_in_doubt, check.unexpected, check.lost_examples) == (1, 1, ["c"])
    assert not check.passed
    assert compare_rows("events", {"a"}, {"b"}, {"a": 1, "b": 1}).passed


def test_the_timeline_files_read_back_what_the_generator_wrote(tmp_path: Path) -> None:
    writer = TimelineWriter(tmp_path)
    record = RequestRecord(100.25, 12.5, EVENTS, 503, "retried", "no Retry-After", "7-1")
    writer.request(record)
    writer.rows("ack", ["u1", "u2"], None)
    writer.rows("ack", [], ("s1", 0))
    writer.rows("doubt", ["u3"], None)
    writer.flush()
    assert read_requests(tmp_path) == [record]
    ledger = read_rows(tmp_path)
    assert ledger.acknowledged_events == {"u1", "u2"}
    assert ledger.acknowledged_chunks == {("s1", 0)}
    assert ledger.doubtful_events == {"u3"}


@pytest.mark.slow
def test_a_pgbouncer_restart_under_a_small_load_loses_nothing_and_recovers(tmp_path: Path) -> None:
    data_dir_before = os.environ.get("SIGHTLINE_DATA_DIR")
    stacks_before = set(Path("/tmp").glob("sightline-chaos-*"))
    options = ChaosOptions(
        users=12,
        ramp_up_s=2,
        hold_s=10,
        ramp_down_s=1,
        faults=("pgbouncer-restart",),
        warmup_s=2,
        gap_s=4,
        reports_dir=tmp_path / "reports",
        progress_s=5,
        payload_variants=2,
    )
    result = run_chaos(options, "sightline chaos (test)", lambda _: None)

    [fault] = result.faults
    assert fault.name == "pgbouncer-restart"
    assert fault.ready_at is not None
    assert fault.ready_at - fault.lifted_at < 10
    [window] = result.windows
    assert window.requests > 0
    assert window.recovered
    assert window.longest_ms <= options.deadline_s * 1000
    events, chunks = result.rows
    assert events.acknowledged > 0
    assert chunks.acknowledged >= 12
    assert (events.lost, events.duplicates, events.unexpected) == (0, 0, 0)
    assert (chunks.lost, chunks.duplicates, chunks.unexpected) == (0, 0, 0)
    assert result.passed
    report = result.report.read_text()
    assert "| pgbouncer-restart |" in report
    assert (result.run.folder / "logs" / "pgbouncer.log").exists()
    # The throwaway stack is gone and the environment is as it was.
    assert os.environ.get("SIGHTLINE_DATA_DIR") == data_dir_before
    assert set(Path("/tmp").glob("sightline-chaos-*")) == stacks_before
