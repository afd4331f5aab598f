"""The seed scenario stepped up to tens of thousands of visitors, single-node Postgres vs Citus.

Meant for a machine larger than the project's 2-core one (issue 18, "breaking point, found
honestly"): Sightline (Postgres, PgBouncer, the services) and the load generator run on
separate cores, so the generator's own CPU never competes with what it measures.

    python -m tools.loadtest.scale --engines single citus --visitors 50000 --steps 5 \
        --step-s 25 --generators 5 --out /tmp/scale

For each engine it starts a fresh stack (`sightline up`, with `--citus-workers N` for Citus)
pinned to the server cores, then runs the asyncio engine of `sightline load`
(tools/loadtest/engine.py) in --generators processes, each pinned to a core of its own and each
driving an equal share of the visitors, up --steps equal steps to --visitors. Each step's new
visitors arrive within a fifth of --step-s (each starts with a 15-60 kB replay chunk, so the
arrivals per second are reported), then the step is held. The low-rate probe runs beside them
on a core of its own. Per step, from its held part only: tracker requests/s, failures, the
probe's ingest and no-op latency (the headline, as in `sightline load`), the generator's own
latency and scheduling delay (late generators are named), and CPU per process group. The
breaking point is the last step with failures <= 0.1 % and probe p95 <= 500 ms (the
`--find-limit` rule). At the end every acknowledged event and chunk is counted in the database.

One project carries the whole load from one address, so its per-project limits (requests/s and
decoded events/s, both per ingest worker and sized for the seed's 5000 visitors) are raised and
the per-address event budget is off for the run: the run measures capacity, not those limits.

Writes scale.json and scale.md to --out; `--render A/scale.json B/scale.json --write` puts the section into
docs/benchmarks.md (run where the docs are, e.g. after fetching the files from the larger machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.cli import admin
from services.cli.processes import raise_open_files_limit
from services.cli.stack import load_local_env
from services.common.settings import AdminDatabaseSettings, StackSettings
from tools.benchmarks_file import write_section
from tools.loadtest import check, payloads, stats
from tools.loadtest.monitor import Monitor, ProcessGroups, read_jsonl
from tools.loadtest.plan import PAYLOADS_FILE, LoadPlan
from tools.loadtest.probe import read_probe

ROOT = Path(__file__).resolve().parents[2]
MARKERS = (
    "<!-- scale-run:start -->",
    "<!-- scale-run:end -->",
    "## Scale run: single-node Postgres vs Citus on a larger machine (issue 18)",
)
# The `--find-limit` rule (tools/loadtest/runner.py): a step holds if both are within bounds.
MAX_FAILURE_SHARE = 0.001
MAX_PROBE_P95_MS = 500.0
# Past this scheduling delay (p95) the generator was late: its offered load was below the plan.
LATE_MS = 50.0
# The stack's own limits that one project carrying the whole load would hit (per ingest worker).
RAISED_LIMITS = {
    "SIGHTLINE_INGEST_RATE_LIMIT_REQUESTS_PER_S": "1000000",
    "SIGHTLINE_INGEST_RATE_LIMIT_BURST": "2000000",
    "SIGHTLINE_INGEST_EVENT_BUDGET_PER_S": "100000000",
    "SIGHTLINE_INGEST_EVENT_BUDGET_BURST": "200000000",
    # The generators all send from 127.0.0.1: the per-address budget would meter the generator.
    "SIGHTLINE_INGEST_ADDRESS_EVENT_BUDGET_PER_S": "0",
    "SIGHTLINE_INGEST_BENCHMARK_NOOP": "1",
}
PROBE_INTERVAL_S = 0.5
SAMPLE_S = 2.0


def cores(spec: str) -> set[int]:
    """'0-9,12' -> {0..9, 12}."""
    chosen: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        chosen.update(range(int(low), int(high or low) + 1))
    return chosen


def pinned(cpus: set[int]) -> Callable[[], None]:
    def start() -> None:
        os.sched_setaffinity(0, cpus)
        raise_open_files_limit()

    return start


def stack_env(engine: str, base: dict[str, str], ingest_workers: int) -> dict[str, str]:
    """The caller's environment (its SIGHTLINE_ ports, say), with this engine's stack and raised limits."""
    env = dict(base)
    env.update(RAISED_LIMITS)
    env["SIGHTLINE_DATA_DIR"] = f"/tmp/sightline-scale-{engine}"
    env["SIGHTLINE_INGEST_WORKERS"] = str(ingest_workers)
    return env


def sightline(arguments: list[str], env: dict[str, str], cpus: set[int], log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "services.cli.main", *arguments],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            preexec_fn=pinned(cpus),
        )


def plan_started(series: list[list[dict[str, Any]]]) -> float:
    """The wall-clock moment the generators' plans began (each sample says how long after it was taken)."""
    starts = sorted(float(s[0]["t"]) - float(s[0]["elapsed"]) for s in series if s)
    if not starts:
        raise RuntimeError("no generator wrote a sample; see generator-*/engine.log")
    return starts[len(starts) // 2]


def step_levels(visitors: int, steps: int, generators: int) -> list[int]:
    """The visitors at each step, as the engine's "steps" shape makes them in every process."""
    per_process = math.ceil(visitors / generators)
    per_step = math.ceil(per_process / steps)
    return [generators * min(per_process, (i + 1) * per_step) for i in range(steps)]


def step_windows(started: float, levels: list[int], step_s: float) -> list[tuple[int, float, float]]:
    """(visitors, from, to) per step: the step's full part (after its fifth of ramping)."""
    return [(level, started + (i + 0.2) * step_s, started + (i + 1) * step_s) for i, level in enumerate(levels)]


def summarise_step(
    window: tuple[int, float, float],
    series: list[list[dict[str, Any]]],
    probe: list[tuple[float, str, int, float]],
    monitor: list[dict[str, Any]],
    generators: int,
) -> dict[str, Any]:
    level, start, end = window
    samples = [s for process in series for s in process if start <= s["t"] - s["interval_s"] and s["t"] <= end + 0.5]
    seconds = (end - start) or 1.0
    tracker_requests = sum(int(s["tracker"]["requests"]) for s in samples)
    tracker_failures = sum(int(s["tracker"]["failures"]) for s in samples)
    # Each process's samples cover the window once; their intervals sum to generators x its length.
    sampled_s = sum(float(s["interval_s"]) for s in samples) / max(1, generators)
    ingest_histogram = stats.merge({int(k): v for k, v in s["histograms"]["ingest"].items()} for s in samples)
    delay_histogram = stats.merge({int(k): v for k, v in s["histograms"]["schedule_delay"].items()} for s in samples)
    generator_cpu = sum(float(s["generator_cpu_s"]) for s in samples)
    in_window = [p for p in probe if start <= p[0] <= end]
    probe_figures: dict[str, Any] = {}
    for path in ("/v1/events", "/v1/noop"):
        times = [p[3] for p in in_window if p[1] == path]
        failed = sum(1 for p in in_window if p[1] == path and p[2] != 202)
        histogram = stats.merge([{stats.bucket(ms): 1} for ms in times])
        probe_figures[path] = {"requests": len(times), "failed": failed, **stats.summary(histogram)}
    cpu: dict[str, float] = {}
    cpu_samples = [m for m in monitor if start <= m["t"] <= end + SAMPLE_S]
    for record in cpu_samples:
        for name, percent in record["cpu"].items():
            cpu[name] = cpu.get(name, 0.0) + percent / len(cpu_samples)
    machine = sum(float(m["machine_cpu"]) for m in cpu_samples) / max(1, len(cpu_samples))
    requests_per_s = tracker_requests / sampled_s if sampled_s else 0.0
    failure_share = tracker_failures / tracker_requests if tracker_requests else 0.0
    probe_p95 = float(probe_figures["/v1/events"]["p95"])
    probe_failed = int(probe_figures["/v1/events"]["failed"])
    delay_p95 = stats.percentile(delay_histogram, 0.95)
    return {
        "visitors": level,
        "seconds": round(seconds, 1),
        "tracker_requests_per_s": round(requests_per_s, 1),
        "tracker_requests": tracker_requests,
        "tracker_failures": tracker_failures,
        "failure_share": failure_share,
        "generator_latency": stats.summary(ingest_histogram),
        "schedule_delay": stats.summary(delay_histogram),
        "generator_late": delay_p95 > LATE_MS,
        "generator_cpu_ms_per_request": 1000 * generator_cpu / tracker_requests if tracker_requests else 0.0,
        # Each generator process has a core of its own: its busiest share of it says whether it kept up.
        "generator_core_percent": 100 * generator_cpu / (sampled_s * generators) if sampled_s else 0.0,
        "probe": probe_figures,
        "cpu_percent_of_core": {name: round(value, 1) for name, value in sorted(cpu.items())},
        "machine_cpu_percent": round(machine, 1),
        "holds": failure_share <= MAX_FAILURE_SHARE and probe_p95 <= MAX_PROBE_P95_MS and probe_failed == 0,
    }


def groups_with_citus(data_dir: Path, generator_pids: list[int], probe_pid: int) -> ProcessGroups:
    groups = ProcessGroups.for_stack(data_dir)
    for pid_file in sorted(data_dir.glob("citus/worker-*/postmaster.pid")):
        name = f"postgres {pid_file.parent.name}"
        groups.extra[name] = _first_line_pid(pid_file)
    groups.extra["load generator"] = lambda: list(generator_pids)
    groups.solo["probe"] = probe_pid
    return groups


def _first_line_pid(pid_file: Path) -> Callable[[], list[int]]:
    def current() -> list[int]:
        try:
            return [int(pid_file.read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    return current


def run_engine(
    engine: str, args: argparse.Namespace, base_env: dict[str, str], echo: Callable[[str], None]
) -> dict[str, Any]:
    out: Path = args.out / engine
    out.mkdir(parents=True, exist_ok=True)
    server_cpus, generator_cpus, probe_cpus = (
        cores(args.server_cores),
        cores(args.generator_cores),
        cores(args.probe_core),
    )
    env = stack_env(engine, base_env, args.ingest_workers)
    up_arguments = ["up"] + (["--citus-workers", str(args.citus_workers)] if engine == "citus" else [])
    log = out / "stack.log"
    echo(f"[{engine}] sightline {' '.join(up_arguments)} on cores {args.server_cores}")
    began = time.monotonic()
    sightline(up_arguments, env, server_cpus, log)
    up_s = time.monotonic() - began
    try:
        return _measure(engine, args, env, out, generator_cpus, probe_cpus, up_s, echo)
    finally:
        echo(f"[{engine}] sightline down")
        sightline(["down"], env, server_cpus, log)


def _measure(
    engine: str,
    args: argparse.Namespace,
    env: dict[str, str],
    out: Path,
    generator_cpus: set[int],
    probe_cpus: set[int],
    up_s: float,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    # This process reads the stack's database settings the way `sightline` does.
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    load_local_env()
    stack_values = dict(os.environ)
    try:
        admin_settings = AdminDatabaseSettings.from_env()
        stack = StackSettings.from_env()
        project = asyncio.run(
            admin.create_project(admin_settings, name=f"scale {engine}", domains=["example.com"], timezone="UTC")
        )
        probe_project = asyncio.run(
            admin.create_project(admin_settings, name=f"scale probe {engine}", domains=["example.com"], timezone="UTC")
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    ingest_port = int(stack_values.get("SIGHTLINE_INGEST_PORT", "8001"))
    base = f"http://127.0.0.1:{ingest_port}"
    levels = step_levels(args.visitors, args.steps, args.generators)
    per_process = math.ceil(args.visitors / args.generators)
    step_s: float = args.step_s
    plan_args = {
        "users": per_process,
        "ramp_up_s": step_s * len(levels),
        "hold_s": 0.0,
        "ramp_down_s": args.ramp_down_s,
        "ingest_url": base,
        "query_url": f"http://127.0.0.1:{stack_values.get('SIGHTLINE_QUERY_PORT', '8002')}",
        "replay_url": f"http://127.0.0.1:{stack_values.get('SIGHTLINE_REPLAY_PORT', '8003')}",
        "shape": "steps",
        "steps": len(levels),
        "project_key": str(project["publicKey"]),
        "secret_key": str(project["secretKey"]),
    }
    echo(f"[{engine}] building payloads")
    pools = payloads.build_pools(str(project["publicKey"]))
    generator_env = {**os.environ, **stack_values}
    processes: list[subprocess.Popen[bytes]] = []
    run_dirs: list[Path] = []
    generator_list = sorted(generator_cpus)
    total_s = step_s * len(levels) + args.ramp_down_s
    for index in range(args.generators):
        run_dir = out / f"generator-{index}"
        run_dir.mkdir(exist_ok=True)
        payloads.save_pools(run_dir / PAYLOADS_FILE, pools)
        run_dirs.append(run_dir)
    for index, run_dir in enumerate(run_dirs):
        plan = LoadPlan(**plan_args, run_dir=str(run_dir))
        cpu = {generator_list[index % len(generator_list)]}
        with (run_dir / "engine.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tools.loadtest.engine"],
                    cwd=ROOT,
                    env={**generator_env, **plan.to_env()},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=pinned(cpu),
                )
            )
    probe = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.loadtest.probe",
            "--port",
            str(ingest_port),
            "--key",
            str(probe_project["publicKey"]),
            "--interval",
            str(PROBE_INTERVAL_S),
            "--seconds",
            str(total_s + 5),
            "--output",
            str(out / "probe.jsonl"),
        ],  # fmt: skip
        cwd=ROOT,
        env=generator_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=pinned(probe_cpus),
    )
    groups = groups_with_citus(stack.data_dir, [p.pid for p in processes], probe.pid)
    monitor = Monitor(out / "monitor.jsonl", groups, None, interval_s=SAMPLE_S)
    monitor.start()
    echo(f"[{engine}] {levels} visitors in {args.generators} generator processes, {step_s:.0f} s a step")
    deadline = time.monotonic() + total_s + 90
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    probe.terminate()
    probe.wait(timeout=15)
    monitor.stop()
    series = [read_jsonl(run_dir / "timeseries.jsonl") for run_dir in run_dirs]
    started = plan_started(series)
    probe_records = read_probe(out / "probe.jsonl")
    monitor_records = read_jsonl(out / "monitor.jsonl")
    steps = [
        summarise_step(window, series, probe_records, monitor_records, args.generators)
        for window in step_windows(started, levels, step_s)
    ]
    acknowledged = check.Acknowledged()
    for run_dir in run_dirs:
        part, _ = check.read_acknowledged(run_dir)
        acknowledged = acknowledged + part
    os.environ.clear()
    os.environ.update(stack_values)
    try:
        stored = asyncio.run(check.stored_rows(AdminDatabaseSettings.from_env(), int(str(project["id"]))))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    checks = check.compare(acknowledged, stored)
    last_good = None
    for step in steps:
        if not step["holds"]:
            break
        last_good = step["visitors"]
    result = {
        "engine": engine,
        "stack_up_s": round(up_s, 1),
        "steps": steps,
        "last_good": last_good,
        "acknowledged": asdict(acknowledged),
        "stored": stored,
        "delivery": [
            {
                "kind": c.kind,
                "acknowledged": c.acknowledged,
                "stored": c.stored,
                "in_doubt": c.in_doubt,
                "verdict": c.verdict,
                "passed": c.passed,
            }
            for c in checks
        ],
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    echo(f"[{engine}] last good step: {last_good}; " + "; ".join(c.verdict for c in checks))
    return result


def render(runs: list[dict[str, Any]]) -> str:
    """One section for one or more runs (each a scale.json), in the order given."""
    lines = [MARKERS[0], ""]
    lines.append(
        "`python -m tools.loadtest.scale` (tools/loadtest/scale.py; on a bare machine through "
        "tools/loadtest/scale_device.sh, with the bundle tools/loadtest/scale_bundle.sh makes). Sightline (Postgres, "
        "PgBouncer, the services) on the server cores; the load generator (the asyncio engine of `sightline "
        "load`) in processes of a core each; the probe on a core of its own. Citus: a coordinator and its workers "
        "on the same server cores. Each step's new visitors arrive within a fifth of the step (each starts with "
        "a 15-60 kB replay chunk), then the step is held; figures are from the held part. One project carries "
        "all the load, so its per-worker request and event limits were raised (the run measures capacity). "
        "A step holds when tracker failures <= 0.1 % and the probe's ingest p95 <= 500 ms (the `--find-limit` "
        "rule)."
    )
    lines.append("")
    for number, data in enumerate(runs, start=1):
        lines.append(f"### Run {number}: measured {data['date']} on {data['machine']}")
        lines.append("")
        lines.append(
            f"`{data['command']}`: {data['ingest_workers']} ingest workers, server cores {data['server_cores']}, "
            f"{data['generators']} generator processes on cores {data['generator_cores']}, probe on core "
            f"{data['probe_core']}, {data['step_s']:.0f} s a step." + (f" {data['note']}" if data.get("note") else "")
        )
        lines.append("")
        for error in data.get("errors", []):
            lines.append(f"Failed: {error}")
            lines.append("")
        for result in data["results"]:
            lines.extend(_render_result(result, float(data["step_s"])))
    lines.append(MARKERS[1])
    return "\n".join(lines)


def _render_result(result: dict[str, Any], step_s: float) -> list[str]:
    last_good = result["last_good"]
    lines = [
        f"**{result['engine']}** (stack up in {result['stack_up_s']} s): last step that held: "
        f"**{f'{last_good:,}' if last_good is not None else 'none'}** visitors.",
        "",
        "| visitors | arrivals/s | tracker req/s | failed | probe ingest p50 / p95 / p99 ms | probe no-op p95 ms | "
        "generator p95 ms (its clock) | schedule delay p95 ms | generator CPU ms/req (% of its core) | "
        "CPU % of a core (ingest / postgres / pgbouncer) | machine CPU % | holds |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    previous = 0
    for step in result["steps"]:
        cpu = step["cpu_percent_of_core"]
        generator = f"{step['generator_cpu_ms_per_request']:.2f} ({step.get('generator_core_percent', 0):.0f} %)"
        postgres = sum(v for k, v in cpu.items() if k.startswith("postgres"))
        events = step["probe"]["/v1/events"]
        late = " (late)" if step["generator_late"] else ""
        arrivals = (step["visitors"] - previous) / (0.2 * step_s)
        previous = step["visitors"]
        lines.append(
            f"| {step['visitors']:,} | {arrivals:,.0f} | {step['tracker_requests_per_s']:,.0f} | "
            f"{step['tracker_failures']} | {events['p50']:.0f} / {events['p95']:.0f} / {events['p99']:.0f} | "
            f"{step['probe']['/v1/noop']['p95']:.0f} | {step['generator_latency']['p95']:.0f} | "
            f"{step['schedule_delay']['p95']:.0f}{late} | {generator} | "
            f"{cpu.get('ingest', 0):.0f} / {postgres:.0f} / {cpu.get('pgbouncer', 0):.0f} | "
            f"{step['machine_cpu_percent']:.0f} | {'yes' if step['holds'] else 'no'} |"
        )
    delivery = "; ".join(
        f"{d['kind']}: {d['acknowledged']:,} acknowledged, {d['stored']:,} stored ({d['verdict']})"
        for d in result["delivery"]
    )
    return [*lines, "", f"Acknowledged vs stored: {delivery}.", ""]


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", choices=["single", "citus"], default=["single", "citus"])
    parser.add_argument("--visitors", type=int, default=50000, help="Visitors at the last step.")
    parser.add_argument("--steps", type=int, default=5, help="Equal steps up to --visitors.")
    parser.add_argument("--step-s", type=float, default=30.0)
    parser.add_argument("--ramp-down-s", type=float, default=10.0)
    parser.add_argument("--generators", type=int, default=5)
    parser.add_argument("--server-cores", default="0-9")
    parser.add_argument("--generator-cores", default="10-14")
    parser.add_argument("--probe-core", default="15")
    parser.add_argument("--ingest-workers", type=int, default=6)
    parser.add_argument("--citus-workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sightline-scale"))
    parser.add_argument("--render", type=Path, nargs="+", help="Only render these scale.json files (earlier runs).")
    parser.add_argument("--write", action="store_true", help="Put the rendered section into docs/benchmarks.md.")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.render:
        section = render([json.loads(path.read_text()) for path in args.render])
        print(section)
        if args.write:
            write_section(section, MARKERS)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    base_env = dict(os.environ)
    data: dict[str, Any] = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()})",
        "command": "python -m tools.loadtest.scale " + " ".join(sys.argv[1:] if argv is None else argv),
        "step_s": args.step_s,
        **{
            key: getattr(args, key)
            for key in (
                "server_cores",
                "generator_cores",
                "probe_core",
                "generators",
                "ingest_workers",
                "citus_workers",
            )
        },
        "results": [],
    }

    def echo(line: str) -> None:
        print(f"{datetime.now(UTC):%H:%M:%S} {line}", flush=True)

    for engine in args.engines:
        try:
            data["results"].append(run_engine(engine, args, base_env, echo))
        except Exception as exc:  # one engine failing still leaves the other's figures
            echo(f"[{engine}] failed: {exc!r}")
            data.setdefault("errors", []).append(f"{engine}: {exc!r}")
        (args.out / "scale.json").write_text(json.dumps(data, indent=2))
    (args.out / "scale.md").write_text(render([data]))
    print(render([data]))


if __name__ == "__main__":
    main()
