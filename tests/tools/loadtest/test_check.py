"""Acknowledged vs stored: the per-process counts add up, and each verdict is the right one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.loadtest.check import Acknowledged, DeliveryCheck, compare, read_acknowledged, write_acknowledged
from tools.loadtest.runner import RunResult


def test_counts_from_every_load_generator_process_are_added(tmp_path: Path) -> None:
    write_acknowledged(tmp_path / "acknowledged-11.json", Acknowledged(events=80, replay_chunks=12, deliveries=22))
    write_acknowledged(
        tmp_path / "acknowledged-12.json",
        Acknowledged(events=16, replay_chunks=3, deliveries=6, failed_deliveries=1, events_in_failed_deliveries=8),
    )
    write_acknowledged(tmp_path / "acknowledged-13.json", Acknowledged())  # the master: no users
    total, files = read_acknowledged(tmp_path)
    assert files == 3
    assert total == Acknowledged(
        events=96, replay_chunks=15, deliveries=28, failed_deliveries=1, events_in_failed_deliveries=8
    )


@pytest.mark.parametrize(
    ("stored", "verdict", "passed"),
    [
        (96, "equal", True),
        (95, "MISSING: acknowledged but not stored", False),
        (104, "more stored than acknowledged, all from deliveries whose answer was lost", True),
        (105, "UNEXPECTED: more stored than sent", False),
    ],
)
def test_verdicts(stored: int, verdict: str, passed: bool) -> None:
    acknowledged = Acknowledged(events=96, replay_chunks=15, events_in_failed_deliveries=8)
    events, chunks = compare(acknowledged, {"events": stored, "replay_chunks": 15})
    assert (events.verdict, events.passed) == (verdict, passed)
    assert chunks == DeliveryCheck("replay chunks", 15, 15, 0)
    assert chunks.passed


def test_a_level_is_good_only_within_both_bounds_and_with_nothing_lost(tmp_path: Path) -> None:
    equal = [DeliveryCheck("events", 10, 10, 0)]
    lost = [DeliveryCheck("events", 10, 9, 0)]

    def result(failure_ratio: float, p95: float, checks: list[DeliveryCheck]) -> RunResult:
        # The p95 judged is the probe's; the generator's own (huge here) is not.
        figures = {
            "failure_ratio": failure_ratio,
            "probe_ingest_p95": p95,
            "probe_requests": 120.0,
            "probe_failure_ratio": 0.0,
            "ingest_p95": 9000.0,
        }
        return RunResult(tmp_path, tmp_path / "report.md", figures, checks)

    assert result(0.001, 500, equal).good
    assert not result(0.0011, 100, equal).good
    assert not result(0.0, 510, equal).good
    assert not result(0.0, 100, lost).good


def test_rows_of_deliveries_the_run_end_interrupted_are_in_doubt_not_unexpected() -> None:
    # 8 events and a chunk were in flight when Locust stopped their users; the server stored them.
    acknowledged = Acknowledged(
        events=96,
        replay_chunks=15,
        interrupted_deliveries=2,
        events_in_interrupted_deliveries=8,
        replay_chunks_in_interrupted_deliveries=1,
    )
    events, chunks = compare(acknowledged, {"events": 104, "replay_chunks": 16})
    assert events == DeliveryCheck("events", 96, 104, 8)
    assert chunks == DeliveryCheck("replay chunks", 15, 16, 1)
    assert events.passed
    assert chunks.passed
    events, _ = compare(acknowledged, {"events": 105, "replay_chunks": 16})
    assert not events.passed
