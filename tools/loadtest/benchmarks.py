"""`sightline load --write-benchmarks`: the sections a load run writes into docs/benchmarks.md."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tools.benchmarks_file import machine_line
from tools.loadtest import report
from tools.loadtest.monitor import read_jsonl
from tools.loadtest.runner import RunResult

SEED = ("<!-- load-seed:start -->", "<!-- load-seed:end -->", "## Seed scenario (`sightline load`)")


def engine_markers(engine: str) -> tuple[str, str, str]:
    return (
        f"<!-- load-engine-{engine}:start -->",
        f"<!-- load-engine-{engine}:end -->",
        f"### The generator alone against the no-op app: {engine}",
    )


LIMIT = ("<!-- load-limit:start -->", "<!-- load-limit:end -->", "## Breaking point (`sightline load --find-limit`)")
LIMIT_CITUS = (
    "<!-- load-limit-citus:start -->",
    "<!-- load-limit-citus:end -->",
    "### Breaking point on Citus (coordinator + workers)",
)


def limit_markers(data_dir: Path) -> tuple[str, str, str]:
    """Single-node and Citus stacks each keep their own breaking point (a Citus stack has `citus/nodes.json`)."""
    return LIMIT_CITUS if (data_dir / "citus" / "nodes.json").exists() else LIMIT


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
    said = report.verdicts(figures)
    stack = report.stack_verdicts(figures)
    f = figures

    def three(prefix: str) -> str:
        return " / ".join(f"{f.get(f'{prefix}_{key}', float('nan')):.0f}" for key in ("p50", "p95", "p99"))

    share = f"{100 * f.get('generator_cpu_share', 0):.0f} % ({100 * f.get('generator_cpu_share_max', 0):.0f} %)"
    rows = [
        ("**probe at full load: ingest p50 / p95 / p99** (the headline)", f"**{three('probe_ingest')} ms**"),
        (
            "probe at full load: no-op p50 / p95; requests not answered 202",
            f"{f.get('probe_noop_p50', 0):.0f} / {f.get('probe_noop_p95', 0):.0f} ms; "
            f"{f.get('probe_failures', 0):.0f} of {f.get('probe_requests', 0):.0f}",
        ),
        ("generator: scheduling delay p50 / p95 / p99", f"{three('schedule_delay')} ms"),
        (
            "generator: CPU per request; share of its core at full load (max)",
            f"{f['generator_cpu_ms_per_request']:.2f} ms; {share}",
        ),
        ("peak users (visitors + no-op users + readers)", f"{f['peak_users']:.0f}"),
        ("requests, requests/s (mean over the whole run, ramps included)", f"{f['requests']:.0f}, {f['rps']:.1f}"),
        ("final failures", f"{f['failures']:.0f} ({100 * f['failure_ratio']:.3f} %)"),
        ("retried attempts (503 or connection lost, resent with the same body)", f"{f['retried_attempts']:.0f}"),
        ("generator's own clock: ingest p50 / p95 / p99", f"{three('ingest')} ms"),
        ("generator's own clock: no-op p95", f"{f['noop_p95']:.0f} ms (ingest p95 = {ratio:.1f}× no-op p95)"),
        (f"at full load only ({f.get('hold_s', 0):.0f} s): requests/s", f"{f.get('hold_rps', 0):.1f}"),
        ("at full load only, generator's clock: ingest p50 / p95 / p99, no-op p95", hold),
        ("PgBouncer server connections, max", f"{f['server_connections_max']:.0f}"),
        ("load average at start, end", f"{f.get('load_average_start', 0):.2f}, {f.get('load_average_end', 0):.2f}"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"""{SEED[0]}
{machine_line()}

Command: `{command}`

{" ".join(said or ["The generator kept to its plan and was not saturated."])}{"".join(" " + line for line in stack)}

| figure | value |
| --- | --- |
{table}

CPU, mean (max) in % of one core: {_cpu(result)}.

Acknowledged vs stored: {checks}.
{SEED[1]}"""


def limit_section(
    last_good: int | None, results: Sequence[RunResult], command: str, markers: tuple[str, str, str] = LIMIT
) -> str:
    rows = "\n".join(
        f"| {result.figures['peak_users']:.0f} | {result.figures['rps']:.0f} | "
        f"{100 * result.figures['failure_ratio']:.3f} % | {result.figures.get('probe_ingest_p95', 0):.0f} | "
        f"{result.figures.get('probe_noop_p95', 0):.0f} | {result.figures['ingest_p95']:.0f} | "
        f"{result.figures.get('schedule_delay_p95', float('nan')):.0f} | "
        f"{100 * result.figures.get('generator_cpu_share', 0):.0f} % | {'good' if result.good else 'over'} | "
        f"{result.figures.get('load_average_start', 0):.1f} → {result.figures.get('load_average_end', 0):.1f} |"
        for result in results
    )
    header = (
        "| peak users | req/s | failures | probe ingest p95 ms | probe no-op p95 ms | generator's ingest p95 ms "
        "| scheduling delay p95 ms | generator CPU | verdict | load average |"
    )
    return f"""{markers[0]}
{machine_line()}

Command: `{command}`

{header}
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Last good level (failures ≤ 0.1 %, the probe's ingest p95 at full load ≤ 500 ms, every acknowledged row
stored; the generator's own clock is shown, not judged): **{last_good if last_good is not None else "none"}** visitors.
{markers[1]}"""


def engine_section(result: RunResult, command: str, engine: str) -> str:
    """A --noop-only run: what the generator adds to the latency it measures, and what it costs."""
    f = result.figures
    start, end, _ = engine_markers(engine)
    noop = result_noop(result)
    rows = [
        ("peak users; requests/s at full load", f"{f['peak_users']:.0f}; {f.get('hold_rps', 0):.1f}"),
        ("generator's no-op p50 / p95 at full load", f"{noop[0]:.0f} / {noop[1]:.0f} ms"),
        (
            "probe's no-op p50 / p95 at full load",
            f"{f.get('probe_noop_p50', 0):.0f} / {f.get('probe_noop_p95', 0):.0f} ms",
        ),
        (
            "**added by the generator** (its p50 / p95 minus the probe's)",
            f"**{noop[0] - f.get('probe_noop_p50', 0):.0f} / {noop[1] - f.get('probe_noop_p95', 0):.0f} ms**",
        ),
        ("generator CPU per request", f"{f['generator_cpu_ms_per_request']:.2f} ms"),
        (
            "generator's share of its core at full load (max)",
            f"{100 * f.get('generator_cpu_share', 0):.0f} % ({100 * f.get('generator_cpu_share_max', 0):.0f} %)",
        ),
        (
            "scheduling delay p50 / p95 / p99",
            " / ".join(f"{f[f'schedule_delay_{k}']:.0f}" for k in ("p50", "p95", "p99")) + " ms"
            if "schedule_delay_p95" in f
            else "not measured (Locust)",
        ),
        ("failures", f"{f['failures']:.0f}"),
        ("load average at start, end", f"{f.get('load_average_start', 0):.2f}, {f.get('load_average_end', 0):.2f}"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"""{start}
{machine_line()}

Command: `{command}`

| figure | value |
| --- | --- |
{table}
{end}"""


def result_noop(result: RunResult) -> tuple[float, float]:
    """The generator's own no-op p50 / p95 at full load (every visitor posts to /v1/noop in these runs)."""
    return result.figures.get("hold_noop_p50", 0.0), result.figures.get("hold_noop_p95", 0.0)
