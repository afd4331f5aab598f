"""`sightline load`: the seed's load test against the local stack, with a report folder."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import click
from click.decorators import FC

from services.common.settings import ServerSettings, ServiceName, StackSettings
from tools.benchmarks_file import write_section
from tools.loadtest.faults import FAULTS
from tools.loadtest.hosts import NotLoopbackError, require_loopback


def _default_url(service: ServiceName) -> str:
    # The stack may listen on another address; the load generator still only talks to loopback.
    return f"http://127.0.0.1:{ServerSettings.from_env(service).port}"


def _loopback(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return require_loopback(value)
    except NotLoopbackError as exc:
        raise click.BadParameter(str(exc)) from exc


def _seconds(flag: str, name: str, default: float, help_text: str) -> Callable[[FC], FC]:
    """A duration option in seconds (at least 0) with its default shown."""
    return click.option(flag, name, type=click.FloatRange(min=0), default=default, show_default=True, help=help_text)


@click.command()
@click.option("--users", type=click.IntRange(min=1), default=5000, show_default=True, help="Concurrent visitors.")
@_seconds("--duration", "hold_s", 180, "Seconds at full load.")
@_seconds("--ramp-up", "ramp_up_s", 60, "Seconds from 0 to full load.")
@_seconds("--ramp-down", "ramp_down_s", 60, "Seconds from full load to 0.")
@click.option(
    "--shape",
    type=click.Choice(["linear", "steps"]),
    default="linear",
    show_default=True,
    help="Ramp up linearly, or in --steps equal steps each held until the next.",
)
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True, help="Steps for --shape steps.")
@click.option("--host", "ingest_url", callback=_loopback, help="Ingest base URL (default: the local stack's).")
@click.option("--query-host", "query_url", callback=_loopback, help="Query base URL (default: the local stack's).")
@click.option("--replay-host", "replay_url", callback=_loopback, help="Replay base URL (default: the local stack's).")
@click.option(
    "--engine",
    type=click.Choice(["asyncio", "locust"]),
    default="asyncio",
    show_default=True,
    help="The load generator: one asyncio process (chosen by measurement), or the Locust scenario.",
)
@click.option(
    "--processes", type=click.IntRange(min=1), default=1, show_default=True, help="Locust processes (--engine locust)."
)
@click.option(
    "--noop-only",
    is_flag=True,
    help="Every visitor posts to the no-op endpoint: what the generator itself adds, against the bare HTTP path.",
)
@click.option("--reports-dir", type=click.Path(path_type=Path), default=Path("reports"), show_default=True)
@click.option("--progress", "progress_s", type=click.FloatRange(min=1), default=5, show_default=True, help="Seconds.")
@click.option(
    "--find-limit",
    is_flag=True,
    help="Step users up (--limit-start, --limit-step) until failures > 0.1 % or the probe's p95 > 500 ms; "
    "report the last good.",
)
@click.option("--limit-start", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--limit-step", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--limit-max", type=click.IntRange(min=1), default=20000, show_default=True)
@click.option(
    "--project-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Send as the projects in this file (`python -m tools.loadtest.preload` loads them with data) "
    "instead of fresh ones; stored rows are counted as after minus before.",
)
@click.option("--write-benchmarks", is_flag=True, help="Write the figures into docs/benchmarks.md (own section).")
def load(
    users: int,
    hold_s: float,
    ramp_up_s: float,
    ramp_down_s: float,
    shape: str,
    steps: int,
    ingest_url: str | None,
    query_url: str | None,
    replay_url: str | None,
    engine: str,
    processes: int,
    noop_only: bool,
    reports_dir: Path,
    progress_s: float,
    find_limit: bool,
    limit_start: int,
    limit_step: int,
    limit_max: int,
    project_file: Path | None,
    write_benchmarks: bool,
) -> None:
    """Run the seed's load test against the local stack (`make up` first) and write a report folder.

    Visitors post a full rrweb snapshot, then events and replay chunks every 5 s; readers poll the
    query and replay services; a few users post to the no-op endpoint as a baseline. The run stops
    by itself; the report ends with acknowledged vs stored rows.
    """
    if processes > 1 and engine != "locust":
        raise click.BadParameter("--processes is for --engine locust; the asyncio engine is one process")
    # Imported here: Locust and matplotlib are the `load` extra, and slow to import for other commands.
    from tools.loadtest import benchmarks, runner

    options = runner.LoadOptions(
        users=users,
        ramp_up_s=ramp_up_s,
        hold_s=hold_s,
        ramp_down_s=ramp_down_s,
        ingest_url=ingest_url or _default_url("ingest"),
        query_url=query_url or _default_url("query"),
        replay_url=replay_url or _default_url("replay"),
        shape="steps" if shape == "steps" else "linear",
        steps=steps,
        noop_only=noop_only,
        processes=processes,
        reports_dir=reports_dir,
        progress_s=progress_s,
        engine="locust" if engine == "locust" else "asyncio",
        project_file=project_file,
    )
    command = runner.shell_command(sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "load" else [])
    if find_limit:
        levels = list(range(limit_start, limit_max + 1, limit_step))
        last_good, results = runner.find_limit(options, levels, command, click.echo)
        if write_benchmarks:
            markers = benchmarks.limit_markers(StackSettings.from_env().data_dir)
            write_section(benchmarks.limit_section(last_good, results, command, markers), markers)
        if last_good is None:
            sys.exit(1)
        return
    result = runner.run_load(options, command, click.echo)
    click.echo(runner.describe(result))
    click.echo(f"report: {result.report}")
    if write_benchmarks and noop_only:
        markers = benchmarks.engine_markers(options.engine)
        write_section(benchmarks.engine_section(result, command, options.engine), markers)
    elif write_benchmarks:
        write_section(benchmarks.seed_section(result, command), benchmarks.SEED)
    if not all(item.passed for item in result.checks):
        raise click.ClickException("acknowledged events or replay chunks are missing from the database")


@click.command()
@click.option(
    "--users", type=click.IntRange(min=1), default=1000, show_default=True, help="Visitors (one request per 5 s each)."
)
@click.option(
    "--duration",
    "hold_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds at full load [default: warm-up plus each fault's time and recovery gap].",
)
@_seconds("--ramp-up", "ramp_up_s", 20, "Seconds from 0 to full load.")
@click.option(
    "--fault",
    "faults",
    type=click.Choice(FAULTS),
    multiple=True,
    help="Only this fault (repeat for more, in the given order) [default: all, in the order listed].",
)
@_seconds("--warmup", "warmup_s", 15, "Seconds of load before the first fault.")
@_seconds("--gap", "gap_s", 30, "Seconds between faults.")
@_seconds("--reject-for", "reject_s", 10, "Seconds Postgres rejects connections.")
@_seconds("--deadline", "deadline_s", 12, "No request may take longer (seconds).")
@click.option("--ingest-workers", type=click.IntRange(min=1), default=None, help="Granian workers for ingest.")
@click.option("--reports-dir", type=click.Path(path_type=Path), default=Path("reports"), show_default=True)
@click.option("--progress", "progress_s", type=click.FloatRange(min=1), default=10, show_default=True, help="Seconds.")
@click.option("--write-benchmarks", is_flag=True, help="Write the summary into docs/benchmarks.md (own section).")
def chaos(
    users: int,
    hold_s: float | None,
    ramp_up_s: float,
    faults: tuple[str, ...],
    warmup_s: float,
    gap_s: float,
    reject_s: float,
    deadline_s: float,
    ingest_workers: int | None,
    reports_dir: Path,
    progress_s: float,
    write_benchmarks: bool,
) -> None:
    """Fault run: the seed load on a throwaway stack while PgBouncer, Postgres and ingest are knocked over.

    Starts its own stack (own data directory under /tmp, free ports), runs the seed scenario,
    and at full load restarts PgBouncer, restarts Postgres (fast), sends ingest SIGTERM and starts
    it again, and makes Postgres reject connections for a while; one after another, each after the
    stack recovered. Reports per fault: unavailability, refused and failed requests, p95, the
    longest request, recovery; and every acknowledged event uuid looked up: lost and duplicated
    must be 0. Exits non-zero otherwise.
    """
    from tools.loadtest import chaos_report
    from tools.loadtest.chaos import ChaosOptions, run_chaos

    options = ChaosOptions(
        users=users,
        ramp_up_s=ramp_up_s,
        hold_s=hold_s,
        faults=faults or FAULTS,
        warmup_s=warmup_s,
        gap_s=gap_s,
        reject_s=reject_s,
        deadline_s=deadline_s,
        reports_dir=reports_dir,
        progress_s=progress_s,
        ingest_workers=ingest_workers,
    )
    invoked = len(sys.argv) > 1 and sys.argv[1] == "chaos"
    command = shlex.join(["sightline", *sys.argv[1:]]) if invoked else "sightline chaos"
    result = run_chaos(options, command, click.echo)
    click.echo(result.report.read_text().split("## Per fault", 1)[-1].split("\n### ", 1)[0])
    click.echo(f"report: {result.report}")
    if write_benchmarks:
        write_section(chaos_report.benchmarks_section(result, command), chaos_report.CHAOS)
    if not result.passed:
        raise click.ClickException("the fault run failed: see the verdicts and the rows lost or duplicated")
