"""`sightline load --write-benchmarks`: the sections a load run writes into docs/benchmarks.md."""

from __future__ import annotations

import os
from collections.abc import Sequence

from tools.benchmarks_file import machine_line
from tools.loadtest.monitor import read_jsonl
from tools.loadtest.runner import RunResult

SEED = ("<!-- load-seed:start -->", "<!-- load-seed:end -->", "## Seed scenario (`sightline load`, Locust)")
LIMIT = ("<!-- load-limit:start -->", "<!-- load-limit:end -->", "## Breaking point (`sightline load --find-limit`)")


def _cpu(result: RunResult) -> str:
    cores = os.cpu_count() or 1
    records = [
        {**record["cpu"], "whole machine (other work included)": record.get("machine_cpu", 0.0) * cores}
        for record in read_jsonl(result.folder / "monitor.jsonl")
        if "cpu" in record
    ]
    cells = []
    for name in sorted({name for record in records for name in record}):
        values = [record.get(name, 0.0) for record in records]
        cells.append(f"{name} {sum(values) / max(1, len(values)):.0f} % (max {max(values, default=0):.0f} %)")
    return "; ".join(cells)


def seed_section(result: RunResult, command: str) -> str:
    figures = result.figures
    ratio = figures["ingest_p95"] / figures["noop_p95"] if figures["noop_p95"] else float("nan")
    checks = "; ".join(
        f"{item.kind}: {item.acknowledged} acknowledged by 202, {item.stored} stored ({item.verdict})"
        for item in result.checks
    )
    hold = (
        f"{figures.get('hold_ingest_p50', 0):.0f} / {figures.get('hold_ingest_p95', 0):.0f} / "
        f"{figures.get('hold_ingest_p99', 0):.0f} ms, {figures.get('hold_noop_p95', 0):.0f} ms"
    )
    return f"""{SEED[0]}
{machine_line()}

Command: `{command}`

| figure | value |
| --- | --- |
| peak users (visitors + no-op users + readers) | {figures["peak_users"]:.0f} |
| requests, requests/s (mean over the whole run, ramps included) | {figures["requests"]:.0f}, {figures["rps"]:.1f} |
| final failures | {figures["failures"]:.0f} ({100 * figures["failure_ratio"]:.3f} %) |
| retried attempts (503 or connection lost, resent with the same body) | {figures["retried_attempts"]:.0f} |
| ingest p50 / p95 / p99 | {figures["ingest_p50"]:.0f} / {figures["ingest_p95"]:.0f} / {figures["ingest_p99"]:.0f} ms |
| no-op p95, same run | {figures["noop_p95"]:.0f} ms (ingest p95 = {ratio:.1f}× no-op p95) |
| at full load only ({figures.get("hold_s", 0):.0f} s): requests/s | {figures.get("hold_rps", 0):.1f} |
| at full load only: ingest p50 / p95 / p99, no-op p95 | {hold} |
| PgBouncer server connections, max | {figures["server_connections_max"]:.0f} |
| load generator CPU per request | {figures["generator_cpu_ms_per_request"]:.2f} ms |

CPU, mean (max) in % of one core: {_cpu(result)}.

Acknowledged vs stored: {checks}.
{SEED[1]}"""


def limit_section(last_good: int | None, results: Sequence[RunResult], command: str) -> str:
    rows = "\n".join(
        f"| {result.figures['peak_users']:.0f} | {result.figures['rps']:.0f} | "
        f"{100 * result.figures['failure_ratio']:.3f} % | {result.figures['ingest_p95']:.0f} | "
        f"{result.figures['noop_p95']:.0f} | {'good' if result.good else 'over'} |"
        for result in results
    )
    return f"""{LIMIT[0]}
{machine_line()}

Command: `{command}`

| peak users | req/s | failures | ingest p95 ms | no-op p95 ms | verdict |
| --- | --- | --- | --- | --- | --- |
{rows}

Last good level (failures ≤ 0.1 %, ingest p95 ≤ 500 ms, every acknowledged row stored):
**{last_good if last_good is not None else "none"}** visitors.
{LIMIT[1]}"""
