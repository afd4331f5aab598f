"""The fault run's report: `chaos.md` in the run folder, and its summary in docs/benchmarks.md."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tools.benchmarks_file import machine_line
from tools.loadtest.fault_windows import (
    LEVEL_WINDOW_S,
    P95_SLACK_MS,
    P95_TOLERANCE,
    PRE_FAULT_S,
    RATE_TOLERANCE,
    RECOVERY_LIMIT_S,
    RECOVERY_STABLE_S,
    FaultWindow,
)

if TYPE_CHECKING:
    from tools.loadtest.chaos import ChaosResult, RowCheck

CHAOS = ("<!-- chaos:start -->", "<!-- chaos:end -->", "## Fault run (`sightline chaos`)")


def _counts(counter: Counter[str]) -> str:
    if not counter:
        return "0"
    return f"{sum(counter.values())} (" + ", ".join(f"{label}: {n}" for label, n in counter.most_common()) + ")"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def traffic_recovered(window: FaultWindow) -> str:
    """The traffic's recovery for the tables: seconds after the lift, or "not recovered"."""
    traffic = window.traffic
    if traffic is None:
        return "-"
    if not traffic.judged:
        return f"not judged ({traffic.before.requests_per_s:.1f} requests/s before the fault)"
    if traffic.recovered_after_s is None:
        return "**not recovered**"
    if not traffic.recovered:
        return f"**not recovered** within {RECOVERY_LIMIT_S:.0f} s ({traffic.recovered_after_s:.0f} s)"
    return f"{traffic.recovered_after_s:.0f}"


def fault_table(windows: Sequence[FaultWindow], deadline_s: float) -> str:
    lines = [
        "| fault | fault lasted s | unavailable s (longest endpoint) | refused requests | retried, then delivered "
        "| final failures | p95 ms | longest request ms | recovered s after lift (last refusal / all ready) "
        "| traffic back to pre-fault rate and p95, s after lift | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for window in windows:
        fault = window.fault
        refused = sum(endpoint.refused for endpoint in window.endpoints)
        verdict = "pass" if window.passed(deadline_s) else "FAIL"
        lines.append(
            f"| {fault.name} | {fault.lifted_at - fault.injected_at:.1f} | {window.unavailable_s:.1f} | "
            f"{refused} of {window.requests} | {sum(window.retried_then_delivered.values())} | "
            f"{sum(window.final_failures.values())} | {window.p95_ms:.0f} | {window.longest_ms:.0f} | "
            f"{window.recovery_s:.1f} / {_seconds(window.ready_after_s)} | {traffic_recovered(window)} | {verdict} |"
        )
    return "\n".join(lines)


def rows_table(rows: Sequence[RowCheck]) -> str:
    lines = [
        "| rows | acknowledged (2xx) | stored | lost | duplicates | stored from failed deliveries | unexpected |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.kind} | {row.acknowledged} | {row.stored} | **{row.lost}** | **{row.duplicates}** | "
            f"{row.stored_in_doubt} | {row.unexpected} |"
        )
    return "\n".join(lines)


def traffic_steps(window: FaultWindow, shown: int = 20) -> str:
    """The tracker traffic second by second from the lift, against the level before the fault."""
    traffic = window.traffic
    if traffic is None:
        return ""
    before = traffic.before
    rows = "\n".join(
        f"| {after_s:.0f} | {level.requests_per_s:.0f} | {level.p95_ms:.0f} | {level.refused} | "
        f"{'yes' if level.holds(before) else 'no'} |"
        for after_s, level in traffic.steps[:shown]
    )
    return f"""Tracker traffic (events and replay requests, every attempt) in the {PRE_FAULT_S:.0f} s before the fault:
{before.requests_per_s:.0f} requests/s, p95 {before.p95_ms:.0f} ms. From the lift, each {LEVEL_WINDOW_S:.0f}-s window
(at the level: rate within {RATE_TOLERANCE:.0%}, p95 within {P95_TOLERANCE}x or +{P95_SLACK_MS:.0f} ms, nothing
refused; recovered: at the level for {RECOVERY_STABLE_S:.0f} s): {traffic_recovered(window)}.

| s after lift | requests/s | p95 ms | refused | at the level |
| --- | --- | --- | --- | --- |
{rows}
"""


def _fault_details(window: FaultWindow) -> str:
    fault = window.fault
    endpoint_rows = "\n".join(
        f"| {endpoint.endpoint} | {endpoint.requests} | {endpoint.refused} | {endpoint.unavailable_s:.1f} | "
        f"{endpoint.recovery_s:.1f} | {'yes' if endpoint.recovered else 'NO'} |"
        for endpoint in window.endpoints
    )
    notes = f" ({fault.notes})" if fault.notes else ""
    return f"""### {fault.name}

{fault.description}{notes}. Window: {window.window_end - window.window_start:.0f} s from the injection
to the next fault (or the end of the hold); {window.requests} requests answered in it.

- retried attempts whose delivery got its 202 later: {_counts(window.retried_then_delivered)}
- retried attempts of deliveries that never got a 202: {_counts(window.retried_never_delivered)}
- final failures: {_counts(window.final_failures)}
- 503 answers without Retry-After: {window.without_retry_after}
- longest request: {window.longest_ms:.0f} ms, {window.longest_request}

| endpoint | requests | refused | unavailable s | recovery s after lift | answered again after |
| --- | --- | --- | --- | --- | --- |
{endpoint_rows}

{traffic_steps(window)}"""


def report_text(result: ChaosResult, command: str) -> str:
    run, faults, windows, rows, options, fault_error = (
        result.run,
        result.faults,
        result.windows,
        result.rows,
        result.options,
        result.fault_error,
    )
    figures = run.figures
    missing = [name for name in options.faults if name not in {fault.name for fault in faults}]
    problems = []
    if fault_error:
        problems.append(f"**A fault could not be injected:** {fault_error}")
    if missing:
        problems.append(f"**Faults not run:** {', '.join(missing)}")
    details = "\n".join(_fault_details(window) for window in windows)
    return f"""# Fault run

Command: `{command}`

{options.users} visitors (plus {figures.get("peak_users", 0) - options.users:.0f} readers and no-op users),
{figures.get("hold_rps", figures.get("rps", 0)):.0f} requests/s at full load, on a stack of its own
(`sightline up` in a throwaway data directory, free ports). Faults one after another, each after
{options.warmup_s:.0f} s of warm-up or {options.gap_s:.0f} s after the previous one recovered. The load
report of the same run (throughput, latency, PgBouncer, CPU plots): [report.md](report.md).

{chr(10).join(problems)}

## Per fault

*Refused*: a retried attempt (503 or no answer, sent again with the same body after Retry-After or
the tracker's backoff) or a final failure. *Unavailable*: from the start of the first refused request to the end of the
last, on the worst endpoint. *Recovered*: seconds from the fault's lift to the end of the last refused
request / until every service's `/health/ready` answered 200. *Traffic back*: seconds from the lift until
the tracker requests' rate and p95 were back at their level of the {PRE_FAULT_S:.0f} s before the fault
(rate within {RATE_TOLERANCE:.0%}, p95 within {P95_TOLERANCE}x, nothing refused, in every {LEVEL_WINDOW_S:.0f}-s window
for {RECOVERY_STABLE_S:.0f} s); "not recovered" past {RECOVERY_LIMIT_S:.0f} s. Verdict: the longest request within
the deadline ({options.deadline_s:.0f} s), every endpoint answered again after its last refusal, the
traffic back within {RECOVERY_LIMIT_S:.0f} s, and every 503 carried Retry-After.

{fault_table(windows, options.deadline_s)}

## Acknowledged vs stored, by key

Every event uuid and replay chunk (session, seq) that got a 202, looked up in the run's project.

{rows_table(rows)}

{details}"""


def write(result: ChaosResult, command: str) -> None:
    """chaos.md (the report) and chaos.json (its figures) in the run folder."""
    result.report.write_text(report_text(result, command))
    faults, windows, rows, fault_error = result.faults, result.windows, result.rows, result.fault_error
    summary = {
        "faults": [fault.as_json() for fault in faults],
        "windows": [
            {
                "fault": window.fault.name,
                "unavailable_s": window.unavailable_s,
                "recovery_s": window.recovery_s,
                "ready_after_s": window.ready_after_s,
                "requests": window.requests,
                "retried_then_delivered": dict(window.retried_then_delivered),
                "retried_never_delivered": dict(window.retried_never_delivered),
                "final_failures": dict(window.final_failures),
                "without_retry_after": window.without_retry_after,
                "p95_ms": window.p95_ms,
                "longest_ms": window.longest_ms,
                "traffic_before": None if window.traffic is None else window.traffic.before.__dict__,
                "traffic_recovered_after_s": None if window.traffic is None else window.traffic.recovered_after_s,
                "traffic_steps": []
                if window.traffic is None
                else [
                    [after_s, level.requests_per_s, level.p95_ms, level.refused]
                    for after_s, level in window.traffic.steps
                ],
            }
            for window in windows
        ],
        "rows": [row.__dict__ for row in rows],
        "fault_error": fault_error,
    }
    (result.run.folder / "chaos.json").write_text(json.dumps(summary, indent=2))


def benchmarks_section(result: ChaosResult, command: str) -> str:
    figures = result.run.figures
    verdict = "every fault passed" if result.passed else "NOT every fault passed (see the table)"
    return f"""{CHAOS[0]}
{machine_line()}

Command: `{command}`

{result.options.users} visitors, {figures.get("hold_rps", figures.get("rps", 0)):.0f} requests/s at full load
(final failures over the whole run: {figures.get("failures", 0):.0f}); deadline {result.options.deadline_s:.0f} s;
{verdict}. Columns and faults are defined in [reliability.md](reliability.md#fault-run-make-chaos--sightline-chaos).

{fault_table(result.windows, result.options.deadline_s)}

{rows_table(result.rows)}
{CHAOS[1]}"""
