"""Runs one load test (or a series, for --find-limit) against the local stack and writes its report."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from services.cli import admin
from services.cli.processes import raise_open_files_limit
from services.common.settings import AdminDatabaseSettings, StackSettings
from tools.loadtest import check, payloads, report
from tools.loadtest.monitor import Monitor, ProcessGroups, pool_limits, read_jsonl
from tools.loadtest.plan import PAYLOADS_FILE, LoadPlan, Traffic
from tools.loadtest.probe import read_probe
from tools.loadtest.traces import breakdown, read_spans
from tools.noop import require_noop_endpoint

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
Engine = Literal["asyncio", "locust"]
# The probe: one events POST and one no-op POST, each on a fresh connection, per interval.
PROBE_INTERVAL_S = 0.5
# Besides the plan's own length: Locust's start (payload pools are built first) and graceful stop.
STARTUP_ALLOWANCE_S = 60.0
STOP_TIMEOUT_S = 30

# --find-limit's verdict on a level, as the issue states it; the p95 is the probe's, at full load.
MAX_FAILURE_RATIO = 0.001
MAX_P95_MS = 500.0


@dataclass(frozen=True, kw_only=True)
class LoadOptions(Traffic):
    """`sightline load`'s choices: the traffic, and how the run is generated and reported."""

    processes: int
    reports_dir: Path
    progress_s: float = 5.0
    # Incremental chunks and event batches in the pool scale with it; first chunks are the
    # captured recordings (this many synthetic full snapshots only when they are missing).
    payload_variants: int = 24
    # Which program generates the load: the asyncio engine (tools/loadtest/engine.py, chosen by
    # measurement, docs/load-testing.md) or the Locust scenario (locustfile.py).
    engine: Engine = "asyncio"
    # Projects that already hold data (tools/loadtest/preload.py writes the file): the load and
    # the probe post as them instead of fresh projects, and the check compares the rows stored
    # during the run (after minus before) with what was acknowledged.
    project_file: Path | None = None


@dataclass(frozen=True)
class RunResult:
    folder: Path
    report: Path
    figures: dict[str, float]
    checks: list[check.DeliveryCheck]
    project_id: int = 0

    @property
    def good(self) -> bool:
        """Within --find-limit's bounds: judged by the probe and by failures, not by the generator's clock."""
        return within_bounds(self.figures, self.checks)


def within_bounds(figures: dict[str, float], checks: list[check.DeliveryCheck]) -> bool:
    """Failures (generator's and probe's) ≤ 0.1 %, the probe's ingest p95 at full load ≤ 500 ms, nothing lost.

    A run whose probe got no answer at full load is not good: nothing was measured.
    """
    return (
        figures["failure_ratio"] <= MAX_FAILURE_RATIO
        and figures.get("probe_failure_ratio", 1.0) <= MAX_FAILURE_RATIO
        and figures.get("probe_requests", 0.0) > 0
        and figures.get("probe_ingest_p95", float("inf")) <= MAX_P95_MS
        and all(item.passed for item in checks)
    )


def trace_files(stack: StackSettings, environ: dict[str, str] | None = None) -> list[Path]:
    env = os.environ if environ is None else environ
    files = sorted((stack.data_dir / "traces").glob("*.jsonl"))
    explicit = env.get("SIGHTLINE_TRACE_FILE")
    if explicit and Path(explicit).exists():
        files.append(Path(explicit))
    return files


def _print_progress(run_dir: Path, echo: Callable[[str], None], last_printed: float) -> float:
    """One line from the newest statistics sample, if there is a new one."""
    lines = read_jsonl(run_dir / "timeseries.jsonl")
    if not lines or lines[-1]["t"] <= last_printed:
        return last_printed
    latest = lines[-1]
    interval = latest["interval_s"]
    requests = sum(endpoint["requests"] for endpoint in latest["endpoints"].values())
    failures = sum(endpoint["failures"] for endpoint in latest["endpoints"].values())
    total_failures = sum(latest.get("errors", {}).values())
    echo(
        f"[{latest['elapsed']:6.0f}s] users {latest['users']:5d}  {requests / max(interval, 1e-9):7.1f} req/s  "
        f"failures {failures} (total {total_failures})  ingest p95 {latest['tracker']['p95']:.0f} ms  "
        f"no-op p95 {latest['endpoints'].get(report.NOOP_ENDPOINT, {}).get('p95', 0):.0f} ms"
        + (
            f"  generator: late p95 {latest['schedule_delay']['p95']:.0f} ms, "
            f"CPU {100 * latest['generator_cpu_s'] / max(interval, 1e-9):.0f} %"
            if "schedule_delay" in latest and "generator_cpu_s" in latest
            else ""
        )
    )
    return float(latest["t"])


def _group_alive(process_group: int) -> bool:
    try:
        os.killpg(process_group, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_group(process_group: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_alive(process_group):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """Locust and its worker processes, which we started in their own session (process group).

    With --processes the master can exit before its workers have stopped their users and
    written their counts; reading the counts (or the database) before then would compare a
    moving target, so the whole group is waited for, and only then stopped by force.
    """
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S + 10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if not _wait_for_group(process.pid, STOP_TIMEOUT_S + 10):
        os.killpg(process.pid, signal.SIGTERM)
        if not _wait_for_group(process.pid, 10):
            os.killpg(process.pid, signal.SIGKILL)


def run_load(
    options: LoadOptions,
    command: str,
    echo: Callable[[str], None] = print,
    folder_suffix: str = "",
    on_started: Callable[[Path, LoadPlan], None] | None = None,
) -> RunResult:
    """One run; on_started(folder, plan) is called once the load generator has been started."""
    stack = StackSettings.from_env()
    admin_settings = AdminDatabaseSettings.from_env()
    require_noop_endpoint(options.ingest_url)
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()
    folder = options.reports_dir / f"load-{report.stamp(started_at)}{folder_suffix}"
    folder.mkdir(parents=True, exist_ok=False)

    if options.project_file is not None:
        projects = json.loads(options.project_file.read_text())
        project, probe_project = projects["load"], projects["probe"]
    else:
        # A project of its own, so the count of stored rows is this run's and nothing else's.
        project = asyncio.run(
            admin.create_project(
                admin_settings,
                name=f"load test {report.stamp(started_at)}",
                domains=["example.com", "localhost", "127.0.0.1"],
                timezone="UTC",
            )
        )
        # The probe posts as a project of its own, so it never changes this run's count of stored rows.
        probe_project = asyncio.run(
            admin.create_project(
                admin_settings,
                name=f"load test probe {report.stamp(started_at)}",
                domains=["example.com", "localhost", "127.0.0.1"],
                timezone="UTC",
            )
        )
    stored_before = asyncio.run(check.stored_rows(admin_settings, int(str(project["id"]))))
    if options.project_file is not None:
        echo(
            f"project {project['id']} already holds {stored_before['events']:,} events, "
            f"{stored_before['replay_chunks']:,} replay chunks"
        )
    plan = LoadPlan(
        **options.traffic(),
        project_key=str(project["publicKey"]),
        secret_key=str(project["secretKey"]),
        run_dir=str(folder),
    )
    public_plan = {key: value for key, value in asdict(plan).items() if key != "secret_key"}
    (folder / "plan.json").write_text(
        json.dumps({**public_plan, "project_id": project["id"], "stored_before": stored_before}, indent=2)
    )

    echo("building payloads (rrweb snapshots, incremental chunks, event batches)")
    variants = options.payload_variants
    pools = payloads.build_pools(
        plan.project_key, first_chunks=variants, incremental_chunks=2 * variants, event_batches=variants
    )
    payloads.save_pools(folder / PAYLOADS_FILE, pools)
    echo(f"first replay chunks: {pools.first_chunk_source}")

    console_url = os.environ.get("SIGHTLINE_PGBOUNCER_ADMIN_URL")
    pool = pool_limits(console_url, "sightline") if console_url else {}
    generator_command = [sys.executable, "-m", "tools.loadtest.engine"]
    locust_command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host", plan.ingest_url,
        # In-flight deliveries finish when users stop, so their 202s are counted.
        "--stop-timeout", str(STOP_TIMEOUT_S),
        "--exit-code-on-error", "0",
        "--loglevel", os.environ.get("SIGHTLINE_LOAD_LOCUST_LOGLEVEL", "WARNING"),
    ]  # fmt: skip
    if options.processes > 1:
        locust_command += ["--processes", str(options.processes)]
    if options.engine == "locust":
        generator_command = locust_command
    elif options.processes > 1:
        raise ValueError("--processes is for --engine locust; the asyncio engine is one process")
    probe_command = [
        sys.executable, "-m", "tools.loadtest.probe",
        "--port", str(urlsplit(plan.ingest_url).port or 80),
        "--key", str(probe_project["publicKey"]),
        "--interval", str(PROBE_INTERVAL_S),
        "--seconds", str(plan.total_s + STARTUP_ALLOWANCE_S),
        "--output", str(folder / "probe.jsonl"),
    ]  # fmt: skip
    groups = ProcessGroups.for_stack(stack.data_dir)
    monitor = Monitor(folder / "monitor.jsonl", groups, console_url)
    echo(f"load test: {plan.users} visitors ({options.engine} engine), report in {folder}")
    with (folder / "locust.log").open("wb") as locust_log:
        process = subprocess.Popen(
            generator_command,
            env={**os.environ, **plan.to_env()},
            cwd=ROOT,
            stdout=locust_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=raise_open_files_limit,
        )
        # A separate process at a low rate: the report's headline latency, outside the generator.
        probe = subprocess.Popen(
            probe_command, cwd=ROOT, stdout=locust_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        groups.extra["load generator"] = lambda: [process.pid]
        groups.solo["probe"] = probe.pid
        # Only this process: Locust, its child, is counted above.
        groups.solo["sightline load"] = os.getpid()
        monitor.start()
        if on_started is not None:
            on_started(folder, plan)
        deadline = time.monotonic() + plan.total_s + STARTUP_ALLOWANCE_S + STOP_TIMEOUT_S + 60
        last_printed = 0.0
        try:
            while process.poll() is None or _group_alive(process.pid):
                if time.monotonic() > deadline:
                    echo("the load generator did not stop by itself in time; stopping it")
                    break
                time.sleep(options.progress_s)
                last_printed = _print_progress(folder, echo, last_printed)
        finally:
            _stop_process_group(process)
            probe.terminate()
            try:
                probe.wait(timeout=15)
            except subprocess.TimeoutExpired:
                probe.kill()
                probe.wait()
            monitor.stop()
    finished_at = datetime.now(UTC)
    load_after = os.getloadavg()

    acknowledged, acknowledged_files = check.read_acknowledged(folder)
    stored_after = asyncio.run(check.stored_rows(admin_settings, int(str(project["id"]))))
    stored = {kind: stored_after[kind] - stored_before[kind] for kind in stored_after}
    checks = check.compare(acknowledged, stored)
    files = trace_files(stack)
    spans, unreadable = read_spans(
        files, since_ns=int(started_at.timestamp() * 1e9), until_ns=int(finished_at.timestamp() * 1e9)
    )
    final_path = folder / "final.json"
    final: dict[str, Any] = json.loads(final_path.read_text()) if final_path.exists() else {}
    data = report.RunData(
        plan=plan,
        command=command,
        started_at=started_at,
        timeseries=read_jsonl(folder / "timeseries.jsonl"),
        monitor=read_jsonl(folder / "monitor.jsonl"),
        final=final,
        acknowledged=acknowledged,
        acknowledged_files=acknowledged_files,
        checks=checks,
        pool=pool,
        breakdown=breakdown(spans),
        spans_read=len(spans),
        trace_files=len(files),
        unreadable_trace_lines=unreadable,
        processes=options.processes,
        probe=read_probe(folder / "probe.jsonl"),
        engine=options.engine,
        load_average=(load_before[0], load_after[0]),
        noop_only=plan.noop_only,
    )
    if not final:
        raise RuntimeError(f"the load generator wrote no statistics; see {folder / 'locust.log'}")
    path = report.write_report(data, folder)
    figures = report.summary_figures(data)
    (folder / "figures.json").write_text(json.dumps(figures, indent=2))
    return RunResult(folder, path, figures, checks, int(str(project["id"])))


def describe(result: RunResult) -> str:
    figures = result.figures
    checks = ", ".join(f"{item.kind} {item.acknowledged} acknowledged / {item.stored} stored" for item in result.checks)
    flags = [word for word, key in (("late", "generator_late"), ("saturated", "generator_saturated")) if figures[key]]
    return (
        f"{figures['peak_users']:.0f} users: {figures['rps']:.0f} req/s, failures {figures['failures']:.0f} "
        f"({100 * figures['failure_ratio']:.3f} %), probe at full load: ingest p50/p95 "
        f"{figures.get('probe_ingest_p50', 0):.0f}/{figures.get('probe_ingest_p95', 0):.0f} ms, no-op p95 "
        f"{figures.get('probe_noop_p95', 0):.0f} ms; generator's own clock: ingest p95 {figures['ingest_p95']:.0f} ms, "
        f"scheduling delay p95 {figures.get('schedule_delay_p95', float('nan')):.0f} ms, "
        f"{100 * figures.get('generator_cpu_share', 0):.0f} % of its core, "
        f"{figures['generator_cpu_ms_per_request']:.2f} ms CPU per request"
        f"{' (GENERATOR ' + ' AND '.join(flags).upper() + ')' if flags else ''}; "
        f"server connections max {figures['server_connections_max']:.0f}; {checks}" + stack_flags(figures)
    )


def stack_flags(figures: Mapping[str, float]) -> str:
    """The report's verdicts on the stack (report.stack_shortfalls) in a few words, if any."""
    found = report.stack_shortfalls(figures)
    words = {
        "behind": lambda share: f"the stack took {100 * share:.0f} % of the planned deliveries",
        "turned_away": lambda share: f"{100 * share:.0f} % of attempts turned away",
        "saturated": lambda share: f"machine {100 * share:.0f} % busy",
    }
    said = [words[key](value) for key, value in found.items()]
    return f" (AT FULL LOAD: {'; '.join(said).upper()})" if said else ""


def find_limit(
    options: LoadOptions, levels: list[int], command: str, echo: Callable[[str], None] = print
) -> tuple[int | None, list[RunResult]]:
    """Runs each level in turn until one fails the bounds; returns the last good level."""
    last_good: int | None = None
    results: list[RunResult] = []
    for users in levels:
        echo(f"--find-limit: {users} users")
        result = run_load(replace(options, users=users), command, echo, folder_suffix=f"-{users}u")
        results.append(result)
        echo(("  good: " if result.good else "  over the limit: ") + describe(result))
        if not result.good:
            break
        last_good = users
    summary = options.reports_dir / f"limit-{report.stamp()}.md"
    rows = "\n".join(
        f"| {int(result.figures['peak_users'])} | {result.figures['rps']:.0f} | "
        f"{100 * result.figures['failure_ratio']:.3f} % | "
        f"{result.figures.get('probe_ingest_p95', 0):.0f} | {result.figures.get('probe_noop_p95', 0):.0f} | "
        f"{result.figures['ingest_p95']:.0f} | {result.figures.get('schedule_delay_p95', float('nan')):.0f} | "
        f"{100 * result.figures.get('generator_cpu_share', 0):.0f} % | "
        f"{'good' if result.good else 'over'} | [{result.folder.name}]({result.folder.name}/report.md) |"
        for result in results
    )
    summary.write_text(
        f"# Breaking point\n\nCommand: `{command}`\n\nBounds: failures ≤ {100 * MAX_FAILURE_RATIO:.1f} % (the "
        f"generator's and the probe's), the probe's ingest p95 at full load ≤ {MAX_P95_MS:.0f} ms, every acknowledged "
        "row stored. The generator's own p95 and its scheduling delay are shown, not judged.\n\n"
        "| users | req/s | failures | probe ingest p95 ms | probe no-op p95 ms | generator's ingest p95 ms "
        "| scheduling delay p95 ms | generator CPU | verdict | report |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"{rows}\n\nLast good level: **{last_good if last_good is not None else 'none'}**\n"
    )
    echo(f"last good level: {last_good if last_good is not None else 'none'} (summary {summary})")
    return last_good, results


def shell_command(argv: list[str]) -> str:
    return shlex.join(["sightline", "load", *argv])
