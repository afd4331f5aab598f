"""The scale run's arithmetic: its steps as the engine makes them, a step's figures, its rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.benchmarks_file import BENCHMARKS
from tools.loadtest.engine import visitor_start_s
from tools.loadtest.plan import LoadPlan
from tools.loadtest.scale import MARKERS, cores, render, step_levels, step_windows, summarise_step

RUNS = sorted((Path(__file__).resolve().parents[3] / "docs" / "scale-runs").glob("*.json"))


def engine_levels(visitors: int, steps: int, generators: int, step_s: float) -> list[int]:
    """Counts, in every process's plan, the visitors who have joined by the end of each step."""
    per_process = -(-visitors // generators)
    plan = LoadPlan(
        users=per_process,
        ramp_up_s=step_s * steps,
        hold_s=0,
        ramp_down_s=0,
        ingest_url="http://127.0.0.1:1",
        query_url="http://127.0.0.1:2",
        replay_url="http://127.0.0.1:3",
        shape="steps",
        steps=steps,
        project_key="k",
        secret_key="s",
        run_dir="/nonexistent",
    )
    starts = [visitor_start_s(plan, index) for index in range(per_process)]
    return [generators * sum(1 for start in starts if start < (step + 1) * step_s) for step in range(steps)]


def test_step_levels_are_what_the_engine_runs() -> None:
    for visitors, steps, generators in ((50000, 5, 5), (18000, 4, 5), (1000, 3, 2), (7, 3, 1)):
        assert step_levels(visitors, steps, generators) == engine_levels(visitors, steps, generators, 25.0)
    # The equal steps of the larger machine's runs.
    assert step_levels(50000, 5, 5) == [10000, 20000, 30000, 40000, 50000]
    assert step_levels(18000, 4, 5) == [4500, 9000, 13500, 18000]


def test_cores() -> None:
    assert cores("0-2,5") == {0, 1, 2, 5}
    assert cores("15") == {15}


def sample(t: float, requests: int, failures: int, latencies: dict[int, int]) -> dict[str, Any]:
    return {
        "t": t,
        "elapsed": t - 1000.0,
        "interval_s": 2.0,
        "generator_cpu_s": 0.1,
        "tracker": {"requests": requests, "failures": failures},
        "histograms": {"ingest": {str(k): v for k, v in latencies.items()}, "schedule_delay": {"0": requests}},
    }


def test_a_step_counts_only_its_held_part_from_every_process() -> None:
    # A 10 s step from t=1000: its first fifth (ramping) is left out, so 1002-1010.
    ((level, start, end),) = step_windows(1000.0, [100], 10.0)
    assert (level, start, end) == (100, 1002.0, 1010.0)
    first = [sample(1002.0, 999, 9, {999: 1}), *(sample(1000.0 + t, 40, 0, {10: 40}) for t in (4, 6, 8, 10))]
    second = [sample(1000.0 + t, 40, 1, {20: 39, 900: 1}) for t in (4, 6, 8, 10)]
    probe = [(1003.0 + i * 0.5, path, 202, 30.0 + i) for i in range(10) for path in ("/v1/events", "/v1/noop")]
    probe.append((1011.0, "/v1/events", 503, 9000.0))  # after the step: not counted
    monitor = [{"t": 1004.0, "cpu": {"ingest": 50.0, "postgres": 30.0}, "machine_cpu": 40.0}]
    step = summarise_step((level, start, end), [first, second], probe, monitor, generators=2)
    # The sample ending at 1002 covered 1000-1002 (ramping) and is left out.
    assert step["tracker_requests"] == 320
    assert step["tracker_failures"] == 4
    assert step["tracker_requests_per_s"] == 40.0  # 320 requests over the 8 s both processes sampled
    assert step["probe"]["/v1/events"]["requests"] == 10
    assert step["probe"]["/v1/events"]["failed"] == 0
    assert step["probe"]["/v1/events"]["p95"] == 39.0
    # 160 answers at 10 ms, 156 at 20 ms and 4 at 900 ms: 316 of 320 (98.75 %) within 20 ms.
    assert step["generator_latency"]["p95"] == 20.0
    assert step["generator_latency"]["p99"] == 900.0
    assert step["cpu_percent_of_core"] == {"ingest": 50.0, "postgres": 30.0}
    # 4 failures of 320 is over 0.1 %: the step did not hold although the probe was fast.
    assert not step["holds"]


def test_the_benchmarks_section_is_the_committed_runs_rendered() -> None:
    """docs/benchmarks.md's scale section is rendered from docs/scale-runs/*.json, nothing typed by hand."""
    assert RUNS, "docs/scale-runs holds the larger machine's runs"
    section = render([json.loads(path.read_text()) for path in RUNS])
    text = BENCHMARKS.read_text()
    start, end, _ = MARKERS
    assert text.count(start) == 1
    committed = start + text.split(start, 1)[1].split(end, 1)[0] + end
    assert committed == section
